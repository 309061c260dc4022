"""toy_face.py — the toy world's own face-embedding model: the toy analogue of ArcFace (issue 26).

MagicID's ID reward r_id compares ArcFace embeddings, and ArcFace was trained to tell *real* people
apart. dlib's descriptor, the offline backend, was too, and on the toy world's procedural people it
cannot tell which person a generated video shows (other people's cosine 0.90-0.92, the person's own
generated videos 0.91-0.94: toyworld/README.md). So the toy world gets what real MagicID has: an
embedding network trained on the population it will score, seeds < 1,000,000 (toyworld/train_face.py),
robust to what the tiny video model does to a face (blur, low resolution, colour shifts, the VAE's round trip).

Detection is dlib's, unchanged (HOG, then MTCNN and the neighbour-frame search in videos: face_encoders.py,
face_tracks.py). Only the embedding differs: the detected box is enlarged to a square that holds the whole
head (in this world hair, skin tone and the face's outline are identity), cut out and embedded:

    box (x0, y0, x1, y1)  ->  square of side CROP_ENLARGE · (x1 − x0) around the box's centre
                          ->  crop [CROP_SIZE, CROP_SIZE, 3]  ->  ToyFaceNet  ->  e [128], ‖e‖ = 1

(dlib's HOG box is ~0.77 head heights wide, centred 0.09 head heights below the head's centre; the square
is then ~1.5 head heights: hair and chin in, some background.) ToyFaceNet is a small CNN (0.6 M parameters):
four stages of 3×3 convs (each halves the side, 64 → 4 px), a global depthwise conv over the last 4×4 map
(MobileFaceNet's "GDC": it keeps *where* a feature is, which global average pooling would lose), a linear
layer to 128 and a unit norm.

Exports: ToyFaceNet, ToyFaceEncoder, crop_square, face_crop, crops_to_tensor, load_toy_face_net,
TOYFACE_WEIGHTS, CROP_SIZE, CROP_ENLARGE.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from face_encoders import DlibFaceEncoder, Face, box_array

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


class ToyFaceEncoder(DlibFaceEncoder):
    """face_encoders' interface with dlib's detection (find_faces, find_video_faces: HOG + MTCNN + tracks)
    and ToyFaceNet's embedding of the enlarged crop. The `crop` of each Face is the network's input."""

    name = "toyface"
    dim = 128

    def __init__(self, folder: str | Path = TOYFACE_WEIGHTS, video_search: bool = True):
        super().__init__(video_search=video_search)
        self.folder = Path(folder)
        self.model = load_toy_face_net(self.folder)
        self.dim = self.model.dim

    def describe(self) -> str:
        search = "; video frames: + MTCNN + neighbour-frame search" if self.mtcnn else "; HOG frame by frame"
        return (f"toyface (dlib HOG detector, the toy world's face CNN on a {CROP_ENLARGE:g}× head crop, "
                f"{self.dim}-d, {self.folder}{search})")

    def faces_in_boxes(self, image: np.ndarray, boxes) -> list[Face]:
        """Faces at given boxes (dlib.rectangle, or [n, 4] x0 y0 x1 y1 from MTCNN): crop, embed."""
        boxes = [box if isinstance(box, np.ndarray) else box_array(box) for box in boxes]
        if not boxes:
            return []
        crops = np.stack([face_crop(image, box) for box in boxes])             # [n, 64, 64, 3]
        with torch.no_grad():
            emb = self.model(crops_to_tensor(crops)).numpy()                   # [n, 128], unit rows
        return [Face(np.asarray(box, np.float32), crop, e) for box, crop, e in zip(boxes, crops, emb)]
