"""toyworld/people.py — generic people for the toy world: procedurally drawn, animated, captioned by what moves.

MagicID's second claim needs a base that can draw *some* person moving: dynamic pairs prefer videos
that have a face and motion, and a base that never saw a person has none. These people are drawn from
random parameters (face shape, skin, hair, eye colour, brows, nose, mouth, glasses, hat, clothes), so
they are nobody in particular, never a real identity. Each frame is a stack of soft-edged shapes,
painted back to front over a background canvas seen through the toy world's camera:

  pixel (u, v) of frame f  ->  canvas point  p = c_f + h_f·(u, v)             (the camera: toy.camera_path)
                           ->  person point  q = (p − o_f) / s_f               (head centre o_f, head half-height s_f)
  layer alpha  a = sigmoid(−d(q) / w),   colour ← colour·(1 − a) + layer·a    (d: the shape's signed distance,
                                                                               w: one output pixel in q units)

Head turns shift the facial features sideways (yaw), nods shift them up and down (pitch), talking
opens the mouth, waving swings a forearm, walking moves o_f, coming closer grows s_f. Everything is
computed for all videos × frames × pixels at once in torch, on the device the canvases live on.

Captions say what moves: "a person walks to the left, camera still", "a person with glasses, camera
pans left", "a photo of a blond person". "Left" is the viewer's left: a person walking to the left
moves to −x in the frame (optical flow −x); the camera's directions follow toy.camera_path.

    python toyworld/people.py --videos 64      # dlib's face-hit rate on a fixed seed set, render time, a sheet

Exports: PERSON_MOTIONS, PeopleWorld (batch(n, frames, size) like toy.ToyWorld), render_people, main.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from toyworld import world as toy  # noqa: E402

PERSON_MOTIONS = ("walks to the left", "walks to the right", "turns their head", "nods", "waves", "talks",
                  "comes closer")
SKIN = np.array([[0.98, 0.84, 0.72], [0.90, 0.70, 0.55], [0.76, 0.55, 0.38], [0.55, 0.37, 0.24],
                 [0.36, 0.23, 0.15]])                                             # light .. dark
HAIR = {"dark-haired": (0.07, 0.06, 0.06), "brown-haired": (0.30, 0.18, 0.10), "blond": (0.85, 0.70, 0.40),
        "red-haired": (0.62, 0.25, 0.10), "grey-haired": (0.62, 0.62, 0.62)}
IRIS = ((0.35, 0.20, 0.10), (0.20, 0.40, 0.70), (0.25, 0.50, 0.30), (0.45, 0.48, 0.52))


def main(argv=None) -> dict:
    """Render --videos people videos from --seed (tiny preset size), time it, and count the frames
    where dlib's detector (faces.DlibFaceEncoder, as the rewards use it) finds a face."""
    from faces import DlibFaceEncoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sheet", default=None, help="PNG path: the middle frame of every video")
    args = p.parse_args(argv)
    world = PeopleWorld(toy.ToyWorld(args.device, seed=args.seed))
    start = time.time()
    videos, captions, motions = world.batch(args.videos, args.frames, args.size)
    seconds = time.time() - start
    frames = toy.to_uint8(videos)                                        # [n, F, H, W, 3]
    encoder = DlibFaceEncoder()
    hits = np.array([[bool(encoder.find_faces(f)) for f in video] for video in frames])  # [n, F]
    per_motion = {m: float(hits[[i for i, x in enumerate(motions) if x == m]].mean()) for m in sorted(set(motions))}
    result = {"face_hit_rate": float(hits.mean()), "videos": args.videos, "render_seconds": seconds,
              "per_motion": per_motion}
    print(result)
    if args.sheet:
        from PIL import Image

        Image.fromarray(np.concatenate([np.concatenate(list(frames[i:i + 8, args.frames // 2]), 1)
                                        for i in range(0, len(frames) - 7, 8)])).save(args.sheet)
    return result


class PeopleWorld:
    """Captioned videos of one generic person each, over the toy world's backgrounds and camera.

    batch(n, frames, size) -> videos [n, 3, F, H, W] in [-1, 1], captions, motions (the person's
    motion, or the camera's when the person stands still, or "still")."""

    def __init__(self, world: "toy.ToyWorld", person_share: float = 0.55, camera_share: float = 0.3):
        self.world, self.rng, self.device = world, world.rng, world.device
        self.person_share, self.camera_share = person_share, camera_share  # the rest: everything still

    def batch(self, n: int, frames: int = 9, size: int = 128):
        r = self.rng
        backgrounds = self.world.backgrounds(n)                                  # [n, 3, S, S]
        kind = r.choice(3, n, p=[self.person_share, self.camera_share, 1 - self.person_share - self.camera_share])
        person_motion = [PERSON_MOTIONS[i] if k == 0 else None for k, i in zip(kind, r.integers(0, 7, n))]
        camera_motion = [toy.MOTIONS[i] if k == 1 else "still"
                         for k, i in zip(kind, r.integers(0, len(toy.MOTIONS) - 1, n))]  # all but "still"
        cams = np.stack([toy.camera_path(m, frames, size, r) for m in camera_motion])    # [n, F, 3]
        looks = [random_look(r) for _ in range(n)]
        poses = np.stack([person_path(m, cam, size, r) for m, cam in zip(person_motion, cams)])  # [n, F, 7]
        videos = render_people(backgrounds, torch.from_numpy(cams).float(), torch.from_numpy(poses).float(),
                               looks, size)
        captions = [caption(look, pm, cm, r) for look, pm, cm in zip(looks, person_motion, camera_motion)]
        motions = [pm or cm for pm, cm in zip(person_motion, camera_motion)]
        return videos, captions, motions


def caption(look: dict, person_motion: str | None, camera_motion: str, rng) -> str:
    """"a person walks to the left, camera still" / "a person with glasses, camera pans left" / "a photo of ..."."""
    words = [look["hair_name"]] if rng.random() < 0.3 and not look["hat"] else []
    if rng.random() < 0.25:  # an unknown word before "person" still means a person (as "a sks person" must)
        words.insert(0, made_up_word(rng))
    subject = "a " + " ".join(words + ["person"])
    if look["glasses"] and rng.random() < 0.5:
        subject += " with glasses"
    elif look["hat"] and rng.random() < 0.5:
        subject += " in a hat"
    if person_motion:
        return f"{subject} {person_motion}, camera still"
    if camera_motion != "still":
        return f"{subject}, {camera_motion}"
    return toy.STILL_CAPTIONS[rng.integers(len(toy.STILL_CAPTIONS))].format(subject)


def made_up_word(rng) -> str:
    """2-4 random lowercase letters, never the benchmark's identity token "sks"."""
    while (word := "".join(chr(97 + i) for i in rng.integers(0, 26, rng.integers(2, 5)))) == "sks":
        pass
    return word


def random_look(r) -> dict:
    """One generic person's appearance (colours RGB in [0, 1]; lengths in head half-heights)."""
    skin = SKIN[r.integers(0, len(SKIN) - 1)] * (1 - r.uniform(0, 1)) + SKIN[r.integers(1, len(SKIN))] * r.uniform(0, 1)
    hair_name = list(HAIR)[r.integers(len(HAIR))]
    return {
        "skin": np.clip(skin * r.uniform(0.9, 1.1, 3), 0, 1), "hair": np.clip(np.array(HAIR[hair_name]) * r.uniform(0.8, 1.2), 0, 1),
        "hair_name": hair_name, "long_hair": r.random() < 0.35, "bald": r.random() < 0.08,
        "width": r.uniform(0.70, 0.84), "jaw": r.uniform(0.0, 0.3),               # head half-width; chin narrowing
        "eye_gap": r.uniform(0.30, 0.36), "eye_size": r.uniform(0.9, 1.15), "iris": np.array(IRIS[r.integers(len(IRIS))]),
        "brow": r.uniform(0.04, 0.07), "mouth_width": r.uniform(0.22, 0.32),
        "lips": np.clip(np.array([0.65, 0.30, 0.30]) * r.uniform(0.7, 1.1), 0, 1),
        "shirt": r.uniform(0.05, 0.95, 3), "glasses": r.random() < 0.2, "hat": r.random() < 0.15,
        "hat_color": r.uniform(0.05, 0.9, 3),
    }


# The face's proportions beyond random_look's (head half-heights; identities.py draws them per identity):
# today's constants, so a look without them renders as before.
FEATURE_DEFAULTS = {"eye_y": -0.12, "eye_open": 1.0, "eye_tilt": 0.0, "brow_lift": 0.22, "brow_arch": 0.08,
                    "brow_tilt": 0.0, "nose_length": 0.26, "nose_width": 0.07, "mouth_y": 0.58, "lip_size": 1.0,
                    "ear_size": 1.0, "cheek_x": 0.55, "blush": 0.0, "beard": 0.0, "moustache": 0.0, "mole": 0.0,
                    "mole_x": 0.3, "mole_y": 0.25, "brow_dark": 0.0}
POSE = ("x", "y", "scale", "yaw", "pitch", "mouth", "wave")  # per frame: canvas px, canvas px, canvas px, rad, rad, 0..1, rad


def person_path(motion: str | None, cams: np.ndarray, size: int, r) -> np.ndarray:
    """The person's pose per frame, [F, 7] (POSE), placed in the camera's middle view.

    Head half-height 22-35 % of the view (a head of 58-90 px at 128: dlib's detector finds it, and the
    VAE's 8× latent grid keeps eyes and mouth apart; the benchmark frames faces at 1.5 face heights);
    walks 1.5-3.5 output px per frame; nods and head turns of 0.15-0.35 rad; coming closer grows the
    head 3-6 % per frame."""
    frames = len(cams)
    mid = cams[frames // 2]                                                    # cx, cy, half (canvas px)
    px = 2 * mid[2] / size                                                     # canvas px per output px
    f = np.arange(frames) - (frames - 1) / 2
    pose = np.zeros((frames, 7))
    pose[:, 0] = mid[0] + r.uniform(-0.15, 0.15) * mid[2]
    pose[:, 1] = mid[1] - r.uniform(0.05, 0.25) * mid[2]
    pose[:, 2] = r.uniform(0.45, 0.7) * mid[2]
    pose[:, 3] = r.uniform(-0.12, 0.12)
    pose[:, 4] = r.uniform(-0.08, 0.08)
    phase, period = r.uniform(0, 2 * math.pi), r.uniform(4, 8)
    wave = np.sin(2 * math.pi * f / period + phase)                           # [F]
    if motion in ("walks to the left", "walks to the right"):
        sign = -1 if motion.endswith("left") else 1
        pose[:, 0] += sign * r.uniform(1.5, 3.5) * px * f
        pose[:, 1] += 0.02 * pose[0, 2] * np.abs(wave)                         # a small step bounce
        pose[:, 3] = sign * r.uniform(0.1, 0.25)                               # looking where it goes
    elif motion == "turns their head":
        pose[:, 3] = r.uniform(0.2, 0.35) * wave
    elif motion == "nods":
        pose[:, 4] = r.uniform(0.15, 0.3) * wave
        pose[:, 1] += 0.05 * pose[0, 2] * wave
    elif motion == "talks":
        pose[:, 5] = np.abs(np.sin(2 * math.pi * f / r.uniform(2.5, 4) + phase))
        pose[:, 4] += 0.05 * wave
    elif motion == "waves":
        pose[:, 6] = 1 + 0.45 * wave                                           # > 0: the arm is up
    elif motion == "comes closer":
        pose[:, 2] *= (1 + r.uniform(0.03, 0.06)) ** f                        # about the middle frame
    return pose


def render_people(backgrounds, cams, poses, looks: list[dict], size: int, supersample: int = 1) -> torch.Tensor:
    """backgrounds [n, 3, S, S] in [0, 1], cams [n, F, 3], poses [n, F, 7] -> videos [n, 3, F, size, size] in [-1, 1]."""
    dev = backgrounds.device
    cams, poses = cams.to(dev), poses.to(dev)
    side = size * supersample
    video = (toy.render(backgrounds, cams, side) + 1) / 2                # [n, 3, F, side, side] in [0, 1]
    # Person coordinates q of every pixel: [n, F, side, side] each.
    u = (torch.arange(side, device=dev) + 0.5) / side * 2 - 1                  # [side]
    cx, cy, half = (cams[..., i, None, None] for i in range(3))               # [n, F, 1, 1]
    ox, oy, scale, yaw, pitch, mouth, wave = (poses[..., i, None, None] for i in range(7))
    X = (cx + half * u.view(1, 1, 1, side) - ox) / scale
    Y = (cy + half * u.view(1, 1, side, 1) - oy) / scale
    pixel = 2 * half / side / scale                                            # one supersampled pixel, in q units
    looks = [{**FEATURE_DEFAULTS, **l} for l in looks]                         # identities.py sets the rest
    look = {k: torch.tensor(np.array([l[k] for l in looks]), dtype=torch.float32, device=dev)
            for k, value in looks[0].items() if not isinstance(value, (str, type(None)))}  # not names
    smile = poses[..., 7, None, None] if poses.shape[-1] > 7 else torch.zeros_like(mouth)  # [n, F, 1, 1]
    paint = Painter(video, pixel)
    shapes_of_a_person(paint, X, Y, yaw, pitch, mouth, wave, look, smile)
    frames = paint.video                                                       # [n, 3, F, side, side]
    n, _, F_, _, _ = frames.shape
    out = torch.nn.functional.avg_pool2d(frames.reshape(n, 3 * F_, side, side), supersample)  # anti-aliasing
    return out.view(n, 3, F_, size, size).clamp(0, 1).mul(2).sub(1)


class Painter:
    """Paints soft shapes over a video [n, 3, F, H, W]: colour ← colour·(1 − a) + layer·a."""

    def __init__(self, video: torch.Tensor, pixel: torch.Tensor):
        self.video, self.pixel = video, pixel                                  # pixel: [n, F, 1, 1] in q units

    def __call__(self, distance: torch.Tensor, color: torch.Tensor, opacity: float | torch.Tensor = 1.0) -> torch.Tensor:
        """distance [n, F, H, W] (< 0 inside), color [n, 3] or [n, 3, F, H, W] -> the alpha painted."""
        alpha = torch.sigmoid(-distance / self.pixel) * opacity               # ~1-px soft edge
        if color.dim() == 2:
            color = color.view(-1, 3, 1, 1, 1)
        self.video = torch.lerp(self.video, color.expand_as(self.video), alpha[:, None])
        return alpha


def ellipse(X, Y, x0, y0, rx, ry):
    """Signed distance to an ellipse, to first order: (k − 1)/|∇k| with k = |((X − x0)/rx, (Y − y0)/ry)|
    (exact for circles; thin ellipses keep a thin edge, unlike (k − 1)·min(rx, ry))."""
    dx, dy = X - x0, Y - y0
    k = torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + 1e-12)
    return (k - 1) * k / torch.sqrt((dx / rx ** 2) ** 2 + (dy / ry ** 2) ** 2 + 1e-12)


def capsule(X, Y, ax, ay, bx, by, radius):
    """Signed distance to the segment a-b thickened by radius."""
    px, py, vx, vy = X - ax, Y - ay, bx - ax, by - ay
    t = ((px * vx + py * vy) / (vx * vx + vy * vy + 1e-12)).clamp(0, 1)
    return torch.sqrt((px - t * vx) ** 2 + (py - t * vy) ** 2 + 1e-12) - radius


def shapes_of_a_person(paint, X, Y, yaw, pitch, mouth, wave, look, smile=0.0) -> None:
    """Back to front: torso, raised arm, neck, long hair, ears, head, hair, hat, then the face's features.
    Facial features move with the head's turn (sideways by 0.5·a·sin yaw, squeezed by cos yaw) and nod;
    FEATURE_DEFAULTS' keys (identities.py) shape them, smile [n, F, 1, 1] in 0..1 lifts the mouth corners."""
    v = lambda key: look[key].view(-1, *([1] * (X.dim() - 1)))                # [n] -> [n, 1, 1, 1]
    c = lambda key: look[key]                                                  # [n, 3]
    a, skin = v("width"), c("skin")
    shade = lambda color, k: color * k
    paint(ellipse(X, Y, 0, 3.25, 2.1, 1.9), c("shirt"))                        # torso, shoulders at y ≈ 1.4
    up = (wave > 0).float()                                                     # the waving arm, only when raised
    elbow_x, elbow_y = 2.0, 1.0
    hand_x, hand_y = elbow_x + 0.9 * torch.sin(wave - 1), elbow_y - 0.9 * torch.cos(wave - 1)
    paint(capsule(X, Y, 1.4, 1.9, elbow_x, elbow_y, 0.28) + 10 * (1 - up), c("shirt") * 0.85)
    paint(capsule(X, Y, elbow_x, elbow_y, hand_x, hand_y, 0.2) + 10 * (1 - up), skin)
    paint(ellipse(X, Y, hand_x, hand_y, 0.26, 0.3) + 10 * (1 - up), skin)
    paint(torch.maximum((X / (0.42 * a)).abs() - 1, Y.sub(1.1).abs() / 0.5 - 1) * 0.3, shade(skin, 0.8))  # neck
    long_hair = v("long_hair") * (1 - v("bald"))
    below_chin = torch.maximum(X.abs() - 0.55 * a, 0.5 - Y)                   # long hair falls beside the neck
    paint(torch.maximum(ellipse(X, Y, 0, 0.35, a * 1.25, 1.3), -below_chin) + 10 * (1 - long_hair), c("hair"))
    ear_shift = -0.25 * a * torch.sin(yaw)                                      # ears move against the turn
    for side in (-1, 1):
        paint(ellipse(X, Y, side * a * 0.97 + ear_shift, 0.05, 0.15 * v("ear_size"), 0.24 * v("ear_size")),
              shade(skin, 0.9))
    width = a * (1 - v("jaw") * Y.clamp(0, 1) ** 2)                              # the chin narrows
    head = ellipse(X, Y, 0, 0, width, 1.0)
    rim = (X / width) ** 2 + Y ** 2                                            # 0 at the centre, 1 at the outline
    lit = skin.view(-1, 3, 1, 1, 1) * (1.05 - 0.3 * rim.clamp(0, 1)[:, None] ** 2)  # rounded: darker to the rim
    paint(head, lit)
    for side in (-1, 1):  # cheeks: a blush, and the cheekbones' width
        cheek = ellipse(X - 0.5 * a * torch.sin(yaw), Y, side * v("cheek_x") * a, 0.3, 0.2, 0.14)
        paint(cheek, torch.tensor([0.85, 0.35, 0.35], device=X.device).expand_as(skin), 0.6 * v("blush"))
    hairline = -0.5 + 0.25 * (X / a) ** 2 + 0.1 * torch.sin(yaw)
    hair = torch.maximum(ellipse(X, Y, 0, -0.12, a * 1.08, 1.0), Y - hairline)  # the hair cap above the hairline
    paint(hair + 10 * v("bald"), c("hair"))
    hat = v("hat")
    paint(torch.maximum(X.abs() - a * 1.25, (Y + 0.72).abs() - 0.1) + 10 * (1 - hat), c("hat_color") * 0.8)  # brim
    paint(torch.maximum(X.abs() - a * 0.95, (Y + 1.15).abs() - 0.38) + 10 * (1 - hat), c("hat_color"))  # crown

    # The face: features in turned-and-nodded coordinates (Xf, Yf).
    Xf = (X - 0.5 * a * torch.sin(yaw)) / torch.cos(yaw)
    Yf = Y - 0.45 * torch.sin(pitch)
    size, gap, open_ = v("eye_size"), v("eye_gap"), v("eye_open")
    for side in (-1, 1):
        ex, ey = side * gap, v("eye_y") + side * v("eye_tilt")
        paint(ellipse(Xf, Yf, ex, ey - 0.02, 0.25 * size, 0.16 * size), shade(skin, 0.75), 0.6)  # eye socket shadow
        sclera = ellipse(Xf, Yf, ex, ey, 0.19 * size, 0.085 * size * open_)
        paint(sclera, torch.full_like(skin, 0.95))
        iris = torch.maximum(ellipse(Xf, Yf, ex + 0.03 * torch.sin(yaw), ey, 0.085 * size, 0.085 * size), sclera)
        paint(iris, c("iris"))
        paint(torch.maximum(ellipse(Xf, Yf, ex + 0.03 * torch.sin(yaw), ey, 0.04 * size, 0.04 * size), sclera),
              torch.zeros_like(skin))                                          # pupil
        lid = torch.maximum(ellipse(Xf, Yf, ex, ey - 0.03, 0.21 * size, 0.085 * size).abs() - 0.018, Yf - ey + 0.02)
        paint(lid, shade(skin, 0.3))                                            # upper lid line
        brow_y = ey - v("brow_lift") + v("brow_arch") * ((Xf - ex) / 0.22) ** 2 + side * v("brow_tilt") * (Xf - ex)
        brow = torch.maximum((Yf - brow_y).abs() - v("brow"), (Xf - ex).abs() - 0.24)
        brow_color = torch.lerp(c("hair") * 0.6 + 0.05, skin * 0.3, look["brow_dark"][:, None])  # [n, 3]
        paint(brow, brow_color)
        glasses = ellipse(Xf, Yf, ex, ey, 0.26, 0.2).abs() - 0.025             # a ring around the eye
        paint(glasses + 10 * (1 - v("glasses")), torch.full_like(skin, 0.08))
    bridge = torch.maximum((Yf + 0.12).abs() - 0.012, Xf.abs() - 0.12)
    paint(bridge + 10 * (1 - v("glasses")), torch.full_like(skin, 0.08))     # the glasses' bridge
    nose, nose_w = v("nose_length"), v("nose_width")                          # tip at y = nose + 0.07
    paint(capsule(Xf, Yf, nose_w, -0.02, nose_w + 0.02, nose, 0.035), shade(skin, 0.72), 0.8)  # shadowed side of the nose
    paint(capsule(Xf, Yf, -0.02, 0.0, -0.01, nose - 0.01, 0.03), torch.clamp(skin * 1.12, max=1.0), 0.6)  # lit ridge
    for side in (-1, 1):
        paint(ellipse(Xf, Yf, side * nose_w, nose + 0.06, 0.045, 0.03), shade(skin, 0.35))  # nostrils
    paint(ellipse(Xf, Yf, v("mole_x"), v("mole_y"), 0.035, 0.035) + 10 * (1 - v("mole")), shade(skin, 0.4))  # a mark
    beard = torch.maximum(torch.maximum(head, v("mouth_y") + 0.1 - Yf), Xf.abs() - 0.6 * a) + 0.02  # the chin
    paint(beard + 10 * (1 - v("beard")), c("hair") * 0.9)
    paint(capsule(Xf, Yf, -v("mouth_width"), v("mouth_y") - 0.1, v("mouth_width"), v("mouth_y") - 0.1, 0.05)
          + 10 * (1 - v("moustache")), c("hair") * 0.9)
    # The mouth: capsules, whose distance is exact (a thin ellipse's first-order one leaks sideways).
    half_width, my = v("mouth_width") - 0.06 + 0.04 * smile, v("mouth_y")
    Ys = Yf + 0.12 * smile * (Xf / half_width.clamp(min=1e-3)) ** 2           # a smile bends the mouth up at the corners
    lips = capsule(Xf, Ys, -half_width, my, half_width, my, 0.06 * v("lip_size") + 0.08 * mouth)  # mouth 0..1 open
    paint(lips, c("lips"))
    paint(capsule(Xf, Ys, -0.8 * half_width, my, 0.8 * half_width, my, 0.012 + 0.07 * mouth),
          torch.full_like(skin, 0.12))


if __name__ == "__main__":
    main()
