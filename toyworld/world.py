"""toyworld/world.py — the toy world's face-free videos: a canvas seen through a moving camera.

  frame f = crop(canvas, centre c_f, half-size h_f)      (camera_path gives (c_f, h_f); render crops)

The canvas is a natural image shipped in scikit-image (cat, coffee, rocket, ... never a face: FACE_IMAGES
are excluded) or a procedural one (gradient, stripes, blobs, circles, squares); the camera pans, tilts,
zooms, sways, shakes, or stays still. Captions name the subject and the motion: "a cat, camera pans
left", "a photo of a rocket" (still). ToyWorld mixes in people at `people_share`, drawn by the generator its
caller sets as `world.people` (toyworld/people.py's PeopleWorld, or identities.py's PopulationWorld): people.py
builds on this file, so this file never imports it.

Exports: ToyWorld, MOTIONS, STILL_CAPTIONS, NATURAL_IMAGES, FACE_IMAGES, CANVAS, camera_path, render, to_uint8.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# scikit-image's images and the subject each caption names. Faces are never in the pretraining data:
# the benchmark's identities (astronaut) and anything else with a person in it stay out.
NATURAL_IMAGES = {
    "chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket", "coins": "coins", "moon": "the moon",
    "brick": "a brick wall", "grass": "grass", "gravel": "gravel", "hubble_deep_field": "galaxies",
    "immunohistochemistry": "stained cells", "retina": "a retina", "page": "a page of text", "text": "letters",
    "clock": "a clock", "horse": "a horse", "logo": "a logo", "cell": "a cell", "colorwheel": "a color wheel",
    "stereo_motorcycle": "a motorcycle", "checkerboard": "a checkerboard",
}
FACE_IMAGES = ("astronaut", "camera", "lfw_subset", "lbp_frontal_face")  # never loaded here
PROCEDURAL = ("a gradient", "stripes", "colorful blobs", "circles", "squares")
MOTIONS = ("camera pans left", "camera pans right", "camera tilts up", "camera tilts down", "camera zooms in",
           "camera zooms out", "camera sways left and right", "handheld camera shakes", "still")
STILL_CAPTIONS = ("a photo of {}", "a close-up photo of {}", "a still image of {}")
CANVAS = 256  # px: canvases are squares of this side; a 128-px frame shows 96..240 px of one



class ToyWorld:
    """Endless captioned videos with camera motion, made on `device` from a seed.

    batch(n, frames) -> videos [n, 3, F, H, W] in [-1, 1] (the VAE's layout), captions, motions.
    Camera convention (image y points down): "pans left" moves the view left, so the scene slides
    right in the frame (optical flow +x); "tilts up" makes it slide down (+y); "zooms in" magnifies.
    """

    def __init__(self, device, seed: int = 0, people_share: float = 0.0):
        from skimage import data

        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.people_share = people_share                                      # of videos that show a person
        self.people = None  # a people generator with batch(n, frames, size): set by the caller when people_share > 0
        self.images, self.subjects, self.grey = [], [], []
        for name, subject in NATURAL_IMAGES.items():
            assert name not in FACE_IMAGES
            try:
                image = getattr(data, name)()
            except Exception as error:  # an image missing from this scikit-image: say so, use the rest
                print(f"toy world: skipping skimage.data.{name} ({type(error).__name__}: {error})")
                continue
            image = np.asarray(image[0] if isinstance(image, tuple) else image)  # stereo pairs: the left view
            self.grey.append(image.ndim == 2)
            image = _to_rgb_float(image)                                   # [3, H, W] in [0, 1]
            self.images.append(torch.from_numpy(image).to(self.device))
            self.subjects.append(subject)
        if not self.images:
            raise RuntimeError("toy world: no scikit-image sample image could be loaded (pip install scikit-image)")

    def describe(self) -> dict:
        return {"natural": self.subjects, "procedural": list(PROCEDURAL), "motions": list(MOTIONS)}

    def batch(self, n: int, frames: int = 9, size: int = 128, with_faces: bool = False):
        """n videos: a binomial share of them people (toyworld/people.py), the rest canvases. with_faces: also
        each frame's head box [n, F, 3] (centre x, y, half-height in output px; zeros where no one is shown),
        which the people generator must give (identities.PopulationWorld does)."""
        n_people = int(self.rng.binomial(n, self.people_share))
        if n_people and self.people is None:
            raise ValueError("people_share > 0 needs world.people: people.PeopleWorld(world) or a PopulationWorld")
        parts = []                                                             # (videos, captions, motions, boxes)
        if n > n_people:
            parts.append((*self._canvas_batch(n - n_people, frames, size), np.zeros((n - n_people, frames, 3))))
        if n_people:
            parts.append(self.people.batch(n_people, frames, size, with_faces=True) if with_faces
                         else (*self.people.batch(n_people, frames, size), None))
        videos, captions, motions, boxes = zip(*parts)
        batch = torch.cat(videos), sum(captions, []), sum(motions, [])
        return (*batch, np.concatenate(boxes)) if with_faces else batch

    def _canvas_batch(self, n: int, frames: int, size: int):
        canvas, subjects = self.backgrounds(n, with_subjects=True)          # [n, 3, S, S]
        motions = [MOTIONS[i] for i in self.rng.integers(0, len(MOTIONS), n)]
        cams = np.stack([camera_path(m, frames, size, self.rng) for m in motions])  # [n, F, 3]: cx, cy, half
        videos = render(canvas, torch.from_numpy(cams).float().to(self.device), size)  # [n, 3, F, H, W]
        captions = [STILL_CAPTIONS[self.rng.integers(len(STILL_CAPTIONS))].format(s) if m == "still"
                    else f"{s}, {m}" for s, m in zip(subjects, motions)]
        return videos, captions, motions

    def backgrounds(self, n: int, with_subjects: bool = False):
        """n random canvases [n, 3, S, S] in [0, 1] (and the subject each shows): also the people's backgrounds."""
        kinds = self.rng.integers(0, len(self.images) + len(PROCEDURAL), n)
        canvases, subjects = [], []
        for k in kinds:
            if k < len(self.images):
                canvases.append(self._natural_canvas(k))
                subjects.append(self.subjects[k])
            else:
                name = PROCEDURAL[k - len(self.images)]
                canvases.append(self._procedural_canvas(name))
                subjects.append(name)
        canvas = _color_jitter(torch.stack(canvases), self.rng)               # [n, 3, S, S]
        return (canvas, subjects) if with_subjects else canvas

    def _natural_canvas(self, k: int) -> torch.Tensor:
        image = self.images[k]                                                # [3, H, W]
        h, w = image.shape[1:]
        side = int(min(h, w) * self.rng.uniform(0.6, 1.0))                    # a random square crop
        top, left = self.rng.integers(0, h - side + 1), self.rng.integers(0, w - side + 1)
        crop = image[None, :, top:top + side, left:left + side]
        canvas = F.interpolate(crop, size=(CANVAS, CANVAS), mode="bilinear", antialias=True, align_corners=False)[0]
        if self.grey[k] and self.rng.random() < 0.5:                          # tint grey images: more colours
            lo, hi = (torch.from_numpy(self.rng.uniform(0, 1, (2, 3, 1, 1))).float().to(self.device))
            canvas = lo + (hi - lo) * canvas.mean(0, keepdim=True)
        return canvas.clamp(0, 1)

    def _procedural_canvas(self, name: str) -> torch.Tensor:
        r, dev = self.rng, self.device
        y, x = torch.meshgrid(torch.linspace(0, 1, CANVAS, device=dev), torch.linspace(0, 1, CANVAS, device=dev),
                              indexing="ij")                                  # [S, S] each
        c0, c1 = (torch.tensor(r.uniform(0, 1, 3), dtype=torch.float32, device=dev).view(3, 1, 1) for _ in range(2))
        angle = r.uniform(0, 2 * math.pi)
        along = x * math.cos(angle) + y * math.sin(angle)                    # [S, S]
        if name == "a gradient":
            mix = (along - along.min()) / (along.max() - along.min())
        elif name == "stripes":
            mix = 0.5 + 0.5 * torch.tanh(4 * torch.sin(2 * math.pi * r.uniform(3, 12) * along + r.uniform(0, 6.3)))
        elif name == "colorful blobs":
            grid = torch.from_numpy(r.uniform(0, 1, (1, 3, 6, 6))).float().to(dev)
            return F.interpolate(grid, size=(CANVAS, CANVAS), mode="bicubic", align_corners=True)[0].clamp(0, 1)
        else:  # circles or squares: a few filled shapes with soft edges on a background
            canvas = c0 * torch.ones(1, CANVAS, CANVAS, device=dev)
            for _ in range(r.integers(3, 9)):
                cx, cy, radius = r.uniform(0, 1), r.uniform(0, 1), r.uniform(0.05, 0.2)
                dist = (torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) if name == "circles"
                        else torch.maximum((x - cx).abs(), (y - cy).abs()))
                inside = torch.sigmoid((radius - dist) * CANVAS / 1.5)       # ~1.5-px anti-aliased edge
                color = torch.tensor(r.uniform(0, 1, 3), dtype=torch.float32, device=dev).view(3, 1, 1)
                canvas = canvas * (1 - inside) + color * inside
            return canvas
        return c0 * (1 - mix) + c1 * mix


def camera_path(motion: str, frames: int, size: int, rng) -> np.ndarray:
    """One camera trajectory, fitted inside the canvas: [F, 3] = (centre x, centre y, half-side), canvas px.

    Speeds are drawn in output pixels per frame (at `size`): pans 2-5 px, zooms 2-5 % of the side,
    sways 6-14 px amplitude, shakes ~3 px steps, so every motion but "still" is visible to optical flow.
    """
    f = np.arange(frames, dtype=np.float64)
    half = rng.uniform(48, 120) * np.ones(frames)                            # canvas px; output side = 2·half
    dx, dy = np.zeros(frames), np.zeros(frames)                              # camera offsets in output px
    speed = rng.uniform(2.0, 5.0)
    if motion in ("camera pans left", "camera pans right"):
        dx = speed * f * (-1 if motion.endswith("left") else 1)
    elif motion in ("camera tilts up", "camera tilts down"):
        dy = speed * f * (-1 if motion.endswith("up") else 1)
    elif motion in ("camera zooms in", "camera zooms out"):
        rate = rng.uniform(0.02, 0.05) * (-1 if motion.endswith("in") else 1)
        half = half * (1 + rate) ** (f - (frames - 1) / 2)                   # zoom about the middle frame
    elif motion == "camera sways left and right":
        dx = rng.uniform(6, 14) * np.sin(2 * math.pi * f / rng.uniform(6, 12) + rng.uniform(0, 2 * math.pi))
    elif motion == "handheld camera shakes":
        steps = rng.normal(0, 3.0, (2, frames))
        dx, dy = np.cumsum(steps[0]), np.cumsum(steps[1])
    px = 2 * half / size                                                     # canvas px per output px
    cx, cy = dx * px, dy * px
    # Fit: shrink the whole path about its start if it needs more than the canvas (output speeds stay).
    extent = max((cx + half).max() - (cx - half).min(), (cy + half).max() - (cy - half).min())
    k = min(1.0, (CANVAS - 1) / extent)
    cx, cy, half = cx * k, cy * k, half * k
    x0 = rng.uniform(-(cx - half).min(), CANVAS - (cx + half).max())
    y0 = rng.uniform(-(cy - half).min(), CANVAS - (cy + half).max())
    return np.stack([cx + x0, cy + y0, half], axis=1)


def render(canvas: torch.Tensor, cams: torch.Tensor, size: int) -> torch.Tensor:
    """canvas [n, 3, S, S] in [0, 1], cams [n, F, 3] -> videos [n, 3, F, size, size] in [-1, 1].

    Each frame is the canvas square centred at (cx, cy) with half-side `half`, sampled at 2× and
    averaged down (supersampling: no aliasing when a frame shrinks 240 canvas px to 128)."""
    n, frames = cams.shape[:2]
    scale = 2 / CANVAS                                                       # canvas px -> [-1, 1] coords
    frames_out = []
    for f in range(frames):
        cx, cy, half = cams[:, f, 0], cams[:, f, 1], cams[:, f, 2]          # [n] each
        theta = torch.zeros(n, 2, 3, device=canvas.device)
        theta[:, 0, 0] = theta[:, 1, 1] = half * scale
        theta[:, 0, 2], theta[:, 1, 2] = cx * scale - 1, cy * scale - 1
        grid = F.affine_grid(theta, [n, 3, 2 * size, 2 * size], align_corners=False)
        frame = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="border", align_corners=False)
        frames_out.append(F.avg_pool2d(frame, 2))                            # [n, 3, size, size]
    return torch.stack(frames_out, dim=2).mul(2).sub(1)                      # [n, 3, F, size, size]


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """[n, 3, F, H, W] in [-1, 1] -> uint8 numpy [n, F, H, W, 3] (magicid's video convention)."""
    return videos.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()


def _to_rgb_float(image: np.ndarray) -> np.ndarray:
    """Any scikit-image sample (bool, grey, RGB, RGBA, uint8 or float) -> float32 [3, H, W] in [0, 1]."""
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].transpose(2, 0, 1))


def _color_jitter(canvas: torch.Tensor, rng) -> torch.Tensor:
    """Random quarter turn, mirror, hue rotation, saturation, contrast and brightness per canvas [n, 3, S, S]."""
    n, dev = canvas.shape[0], canvas.device
    turns = torch.from_numpy(rng.integers(0, 4, n)).to(dev)
    for k in (1, 2, 3):
        canvas = torch.where((turns == k).view(n, 1, 1, 1), canvas.rot90(k, dims=(-2, -1)), canvas)
    flip = torch.from_numpy(rng.random(n) < 0.5).to(dev).view(n, 1, 1, 1)
    canvas = torch.where(flip, canvas.flip(-1), canvas)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    c = torch.einsum("ij,njhw->nihw", yiq, canvas)                           # [n, 3, S, S]: luma, chroma I, Q
    hue = torch.from_numpy(rng.uniform(-math.pi, math.pi, n) * (rng.random(n) < 0.5)).float().to(dev)
    sat = torch.from_numpy(rng.uniform(0.6, 1.3, n)).float().to(dev)
    cos, sin = (torch.cos(hue) * sat).view(n, 1, 1), (torch.sin(hue) * sat).view(n, 1, 1)
    i, q = c[:, 1] * cos - c[:, 2] * sin, c[:, 1] * sin + c[:, 2] * cos
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, n)).float().to(dev).view(n, 1, 1)
    bright = torch.from_numpy(rng.uniform(-0.1, 0.1, n)).float().to(dev).view(n, 1, 1)
    luma = (c[:, 0] - 0.5) * contrast + 0.5 + bright
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(yiq), torch.stack([luma, i, q], 1))
    return rgb.clamp(0, 1)
