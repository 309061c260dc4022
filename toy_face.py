"""toy_face.py — the toy world's own face model, detector and embedding: the toy analogue of RetinaFace + ArcFace (issue 26).

MagicID's ID reward r_id compares ArcFace embeddings, and ArcFace was trained to tell *real* people
apart. dlib's descriptor, the offline backend, was too, and on the toy world's procedural people it
cannot tell which person a generated video shows (other people's cosine 0.90-0.92, the person's own
generated videos 0.91-0.94: toyworld/README.md). So the toy world gets what real MagicID has: an
embedding network trained on the population it will score, seeds < 1,000,000 (toyworld/train_face.py),
robust to what the tiny video model does to a face (blur, low resolution, colour shifts, the VAE's round trip).

Detection is the toy world's own too (toy_face.ToyFaceDetector, trained by toyworld/train_face_detector.py: it returns the box dlib would draw around the
face it finds, so the geometry below holds for both). The detected box is enlarged to a square that holds the
whole head (in this world hair, skin tone and the face's outline are identity), cut out and embedded:

    box (x0, y0, x1, y1)  ->  square of side CROP_ENLARGE · (x1 − x0) around the box's centre
                          ->  crop [CROP_SIZE, CROP_SIZE, 3]  ->  ToyFaceNet  ->  e [128], ‖e‖ = 1

(The detector's box, like dlib's HOG box, is ~0.77 head heights wide, centred ~0.1 head heights below the head's
centre; the square is then ~1.5 head heights: hair and chin in, some background.) ToyFaceNet is a small CNN (0.6 M parameters):
four stages of 3×3 convs (each halves the side, 64 → 4 px), a global depthwise conv over the last 4×4 map
(MobileFaceNet's "GDC": it keeps *where* a feature is, which global average pooling would lose), a linear
layer to 128 and a unit norm.

Exports: ToyFaceNet, ToyFaceEncoder, FaceDetectorNet, ToyFaceDetector, decode, head_to_face_box, crop_square, face_crop, crops_to_tensor, load_toy_face_net,
TOYFACE_WEIGHTS, CROP_SIZE, CROP_ENLARGE.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face_encoders import Face, FaceEncoder, box_array

TOYFACE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "toyface"
CROP_SIZE = 64        # px: the network's input side
CROP_ENLARGE = 2.0    # crop side / detector box width: the whole head, hair included


class ToyFaceNet(nn.Module):
    """crops [B, 3, 64, 64] in [-1, 1] -> unit embeddings [B, dim]. widths: the four conv stages' channels."""

    def __init__(self, widths=(32, 64, 128, 256), dim: int = 128):
        super().__init__()
        layers, previous = [], 3
        for i, width in enumerate(widths):                    # each stage halves the side: 64 -> 32 -> 16 -> 8 -> 4
            layers.append(conv_bn_relu(previous, width, stride=2))
            if i < len(widths) - 1:                           # the last stage is its strided conv alone
                layers.append(conv_bn_relu(width, width, stride=1))
            previous = width
        self.features = nn.Sequential(*layers)                 # [B, 256, 4, 4]
        self.widths, self.dim = tuple(widths), dim
        side = CROP_SIZE // 2 ** len(widths)                   # 4 px
        self.gdc = nn.Sequential(nn.Conv2d(previous, previous, side, groups=previous, bias=False),  # [B, 256, 1, 1]
                                 nn.BatchNorm2d(previous))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous, dim, bias=False), nn.BatchNorm1d(dim))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.gdc(self.features(crops))), dim=1)   # [B, dim]


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def crop_square(box, enlarge: float = CROP_ENLARGE) -> tuple[int, int, int]:
    """box (x0, y0, x1, y1) -> the crop's (left, top, side) in whole px: a square of side enlarge·width,
    centred on the box's centre. The box's width, not its height: HOG's and MTCNN's boxes agree on the width
    (1.54 vs 1.47 head half-heights on the world's renders) but not on the height (1.54 vs 1.79)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(1, round(enlarge * (x1 - x0)))
    return round((x0 + x1) / 2 - side / 2), round((y0 + y1) / 2 - side / 2), side


def face_crop(image: np.ndarray, box, enlarge: float = CROP_ENLARGE, size: int = CROP_SIZE) -> np.ndarray:
    """image uint8 [H, W, 3] -> the head's crop uint8 [size, size, 3]. Where the square leaves the image
    the edge pixels are repeated (a square stays a square: no stretching near the border)."""
    left, top, side = crop_square(box, enlarge)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    square = image[top + pad: top + pad + side, left + pad: left + pad + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR   # area: no aliasing when shrinking
    return cv2.resize(np.ascontiguousarray(square), (size, size), interpolation=interpolation)


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [-1, 1] (no per-image normalisation: colour is identity)."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def load_toy_face_net(folder: str | Path = TOYFACE_WEIGHTS) -> ToyFaceNet:
    """config.json + model.safetensors (toyworld/train_face.py writes them) -> the network, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no toy face model in {folder} (model.safetensors + config.json): train one with "
                                f"`python toyworld/train_face.py --out {folder}` or pass its folder as --id-model-root")
    config = json.loads((folder / "config.json").read_text())
    net = ToyFaceNet(tuple(config["widths"]), config["dim"])
    net.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return net.eval()


# ---- the detector (toyworld/train_face_detector.py trains it) ---------------------------------------------------

DETECT_SIZE, DETECT_STRIDE = 128, 8  # px: frames are resized to DETECT_SIZE²; the heat map has (128 / 8)² cells
DETECT_THRESHOLD = 0.35              # sigmoid(heat) a face needs (chosen on held-out renders: toyworld/README.md)
DETECTOR_WEIGHTS = Path(__file__).resolve().parent / "weights" / "toy-face-detector"
FACE_HALF, FACE_BELOW = 0.765, 0.21  # dlib's box around a head of half-height h: ±0.765 h, centred 0.21 h lower


class FaceDetectorNet(nn.Module):
    """[B, 3, 128, 128] in [-1, 1] -> [B, 4, 16, 16]: heat logit, log(h / 128), offset x, offset y (logits).
    Dilated 3 × 3 convolutions at stride 8 see 143 px: a whole head of any size the world draws."""

    def __init__(self, width: int = 64):
        super().__init__()
        layers, channels = [], 3
        for out, stride, dilation in ((16, 2, 1), (32, 2, 1), (width, 2, 1), (width, 1, 2), (width, 1, 4), (width, 1, 2)):
            layers += [nn.Conv2d(channels, out, 3, stride, padding=dilation, dilation=dilation), nn.ReLU()]
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 4, 1)
        nn.init.constant_(self.head.bias[:1], -4.0)  # P(centre) ≈ 0.02 at the start, as CenterNet: no loss spike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def head_to_face_box(cx: float, cy: float, half: float) -> np.ndarray:
    """A head (centre, half-height; px) -> the face box [x0, y0, x1, y1] dlib would draw around it."""
    fy = cy + FACE_BELOW * half
    return np.array([cx - FACE_HALF * half, fy - FACE_HALF * half, cx + FACE_HALF * half, fy + FACE_HALF * half],
                    np.float32)


class ToyFaceDetector:
    """detect(frames uint8 [F, H, W, 3]) -> per frame, a list of (face box [4] in the frame's px, score)."""

    def __init__(self, folder: str | Path = DETECTOR_WEIGHTS, threshold: float | None = None):
        from safetensors.torch import load_file

        folder = Path(folder)
        if not ((folder / "model.safetensors").is_file() and (folder / "config.json").is_file()):
            raise FileNotFoundError(f"no toy face detector in {folder}: train one with python toyworld/train_face_detector.py")
        config = json.loads((folder / "config.json").read_text())
        self.net = FaceDetectorNet(config["width"]).eval()
        self.net.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.threshold = threshold if threshold is not None else config.get("threshold", DETECT_THRESHOLD)

    @torch.no_grad()
    def detect(self, frames: np.ndarray) -> list[list[tuple[np.ndarray, float]]]:
        frames = np.asarray(frames)
        height, width = frames.shape[1:3]
        x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [F, 3, H, W] (a copy)
        x = F.interpolate(x, size=(DETECT_SIZE, DETECT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        scale = np.array([width, height, width, height], np.float32) / DETECT_SIZE
        return [[(box * scale, score) for box, score in peaks] for peaks in decode(self.net(x), self.threshold)]


def decode(out: torch.Tensor, threshold: float) -> list[list[tuple[np.ndarray, float]]]:
    """The net's output [B, 4, G, G] -> per image, the faces (box in DETECT_SIZE px, score), strongest first."""
    heat = torch.sigmoid(out[:, 0])                                                    # [B, G, G]
    peaks = (heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]) & (heat >= threshold)
    faces = []
    for b in range(len(out)):
        found = []
        for i, j in peaks[b].nonzero().tolist():
            cx = (j + torch.sigmoid(out[b, 2, i, j]).item()) * DETECT_STRIDE
            cy = (i + torch.sigmoid(out[b, 3, i, j]).item()) * DETECT_STRIDE
            found.append((head_to_face_box(cx, cy, float(np.exp(out[b, 1, i, j].item())) * DETECT_SIZE), heat[b, i, j].item()))
        kept = []  # a big head can peak in two cells: a weaker face centred inside a stronger one's box is the same
        for box, score in sorted(found, key=lambda face: -face[1]):
            centre = (box[:2] + box[2:]) / 2
            if not any((k[:2] <= centre).all() and (centre <= k[2:]).all() for k, _ in kept):
                kept.append((box, score))
        faces.append(kept)
    return faces


class ToyFaceEncoder(FaceEncoder):
    """face_encoders' interface with the toy world's own detector (ToyFaceDetector above: it finds the faces the
    tiny models draw, which dlib's HOG and MTCNN miss half the time) and ToyFaceNet's embedding of the enlarged
    crop. The `crop` of each Face is the network's input."""

    name = "toyface"
    dim = 128
    # Detector score for "surely a face" (the several-people warning on reference photos): reference stills of 4
    # held-out identities scored 0.93-0.97; the same stills with that face painted over (faces.py's second search)
    # still show a head, which scored up to 0.84.
    CONFIDENT = 0.9

    def __init__(self, folder: str | Path = TOYFACE_WEIGHTS, detector_folder: str | Path | None = None):
        self.folder = Path(folder)
        self.model = load_toy_face_net(self.folder)
        self.dim = self.model.dim
        self.detector = ToyFaceDetector(detector_folder or DETECTOR_WEIGHTS)

    def describe(self) -> str:
        return (f"toyface (the toy world's face detector and face CNN on a {CROP_ENLARGE:g}× head crop, "
                f"{self.dim}-d, {self.folder})")

    def find_faces(self, image: np.ndarray, thorough: bool = False, confident: bool = False) -> list[Face]:
        """Faces in one image. `thorough` (dlib: upsample and search harder) changes nothing here: the toy
        detector's one pass at DETECT_SIZE already covers every head size the world draws (45-83 px at 128)."""
        return self.find_video_faces(np.asarray(image)[None], confident)[0]

    def find_video_faces(self, frames: np.ndarray, confident: bool = False) -> list[list[Face]]:
        """All frames through the detector at once, then each frame's faces embedded. [F, H, W, 3] -> F lists."""
        detections = self.detector.detect(np.asarray(frames))
        floor = self.CONFIDENT if confident else 0.0
        return [self.faces_in_boxes(frame, [box for box, score in found if score >= floor])
                for frame, found in zip(frames, detections)]

    def faces_in_boxes(self, image: np.ndarray, boxes) -> list[Face]:
        """Faces at given boxes ([4] x0 y0 x1 y1 arrays, from ToyFaceDetector; or dlib.rectangle): crop, embed."""
        boxes = [box if isinstance(box, np.ndarray) else box_array(box) for box in boxes]
        if not boxes:
            return []
        crops = np.stack([face_crop(image, box) for box in boxes])             # [n, 64, 64, 3]
        with torch.no_grad():
            emb = self.model(crops_to_tensor(crops)).numpy()                   # [n, 128], unit rows
        return [Face(np.asarray(box, np.float32), crop, e) for box, crop, e in zip(boxes, crops, emb)]
