"""Face identity encoders: image -> faces -> one identity embedding per face.

The ID reward of MagicID (METHOD.md, "Rewards") needs, for a frame, the faces in it and an
identity embedding e (a unit vector) for each; two faces are the same person when cos(e1, e2)
is high. Two backends sit behind one small interface:

    encoder.name                                    "dlib" | "insightface"
    encoder.describe()                              which models ran, for reports
    encoder.find_faces(image, thorough=False)       -> list[Face]   (box, aligned crop, embedding)
    encoder.embed_faces(frames, mean_ref=None)      -> emb [F, D] float32, found [F] bool

- "dlib": HOG frontal detector + 5-point alignment + the ResNet face descriptor (D = 128) from
  the `face_recognition_models` pip package. Weights ship with pip: the offline default.
- "insightface": ArcFace (D = 512) from a local model pack (antelopev2 / buffalo_l: SCRFD
  detector + recogniser; the paper's choice), or a lone recognition .onnx whose faces are then
  found and aligned with dlib's detector and 68-point landmarks.

The backends' cosine scales differ, so identity thresholds are per backend: ID_CALIBRATION.
Exports: Face, ID_CALIBRATION, make_face_encoder, DlibFaceEncoder, InsightFaceEncoder.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

INSIGHTFACE_PACKS = ("antelopev2", "buffalo_l")
INSIGHTFACE_ROOT = Path("~/.insightface/models").expanduser()
# HOG detection score floor. Below ~0.15 dlib's hits are mostly not faces (skimage's astronaut:
# the face scores 1.16, a patch of her flag 0.12); a real but strongly turned face can score lower
# and is then missed, and its frame counts as one without a face.
DLIB_MIN_SCORE = 0.15
MIN_SEARCH_SIDE = 256  # px; smaller frames are upscaled to this long side before the face search


@dataclass(frozen=True)
class IdCalibration:
    same: float      # typical cosine between two photos of one person
    cross: float     # typical cosine between two different people
    delta_id: float  # recommended identity margin δ_id for pair selection


# δ_id = 0.10 is METHOD's value on the ArcFace scale. For dlib we keep δ_id the same fraction of
# the same-vs-cross gap: 0.10 / (0.60 - 0.05) = 18 % of the gap. dlib's numbers were measured
# with this file's pipeline on the 16 frames of shared/data/faces (4 generated identities, 15 with
# a face found, every pair; tests/test_rewards.py re-measures them): same 0.946 ± 0.036 (21 pairs),
# cross 0.804 ± 0.058 (84 pairs), AUC 0.99 -> δ_id = 0.18 × 0.142 ≈ 0.03. (METHOD's 11-identity
# numbers, 0.93 vs 0.83, give 0.018.) ArcFace's same/cross are typical published values on
# generated videos (face similarity of identity-customised T2V models; ArcFace of unrelated
# people), not measured here: no insightface pack is available offline.
ID_CALIBRATION = {
    "insightface": IdCalibration(same=0.60, cross=0.05, delta_id=0.10),
    "dlib": IdCalibration(same=0.946, cross=0.804, delta_id=0.03),
}


@dataclass
class Face:
    box: np.ndarray        # [4] float x0, y0, x1, y1 in the image's pixels
    crop: np.ndarray       # uint8 [S, S, 3] RGB, aligned (dlib S=150, ArcFace S=112)
    embedding: np.ndarray  # float32 [D], unit norm

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def make_face_encoder(backend: str = "auto", model_root: str | Path | None = None) -> FaceEncoder:
    """The ID encoder. backend: "auto" (insightface when a pack is on disk or model_root is a
    .onnx, else dlib), "dlib" or "insightface". model_root (insightface): a pack folder, a folder of packs (default
    ~/.insightface/models), or one recognition .onnx. Prints which backend runs."""
    if backend not in ("auto", "dlib", "insightface"):
        raise ValueError(f"unknown ID backend {backend!r}: use 'auto', 'dlib' or 'insightface'")
    root = Path(model_root).expanduser() if model_root is not None else INSIGHTFACE_ROOT
    if backend == "auto":
        backend = "insightface" if root.suffix == ".onnx" or _find_pack(root) is not None else "dlib"
    if backend == "dlib":
        encoder = DlibFaceEncoder()
    elif root.suffix == ".onnx":
        encoder = InsightFaceEncoder.from_recognizer_onnx(root)
    else:
        pack = _find_pack(root)
        if pack is None:
            raise FileNotFoundError(_missing_pack_message(root))
        encoder = InsightFaceEncoder.from_pack(pack)
    print(f"ID encoder: {encoder.describe()}", file=sys.stderr)
    return encoder


class FaceEncoder:
    """Shared part of the backends: from faces per frame to one embedding per frame."""

    name = ""
    dim = 0

    def describe(self) -> str:
        return self.name

    def find_faces(self, image: np.ndarray, thorough: bool = False) -> list[Face]:
        raise NotImplementedError

    def embed_faces(self, frames: np.ndarray, mean_ref: np.ndarray | None = None):
        """frames: uint8 [F, H, W, 3] -> (emb [F, D] float32, found [F] bool). The best face of a
        frame is the one closest to mean_ref when given (METHOD: best face per frame), else the
        largest; a frame without faces gets a zero row and found=False."""
        per_frame = [self.find_faces(frame) for frame in frames]
        emb = np.zeros((len(frames), self.dim), np.float32)  # [F, D]
        found = np.zeros(len(frames), bool)                  # [F]
        for i, faces in enumerate(per_frame):
            if not faces:
                continue
            if mean_ref is not None:
                best = max(faces, key=lambda face: float(face.embedding @ mean_ref))
            else:
                best = max(faces, key=lambda face: face.area)
            emb[i], found[i] = best.embedding, True
        return emb, found


class DlibFaceEncoder(FaceEncoder):
    """dlib: HOG detector on a copy downscaled to `detect_long_side` px, 5-point landmarks on the
    full frame, 150-px aligned chip, ResNet descriptor [128]."""

    name = "dlib"
    dim = 128

    def __init__(self, detect_long_side: int = 640, upsample: int = 1):
        import dlib

        models = dlib_model_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.detect_long_side = detect_long_side
        self.upsample = upsample

    def describe(self) -> str:
        return "dlib (HOG detector + face_recognition_models ResNet descriptor, 128-d)"

    def find_faces(self, image: np.ndarray, thorough: bool = False) -> list[Face]:
        import dlib

        image = np.ascontiguousarray(image)
        boxes = dlib_boxes(self.detector, image, self.detect_long_side, self.upsample, thorough)
        if not boxes:
            return []
        shapes = [self.landmarks(image, box) for box in boxes]
        chips = [dlib.get_face_chip(image, shape, size=150, padding=0.25) for shape in shapes]
        emb = np.asarray(self.net.compute_face_descriptor(chips), np.float32)  # [n, 128]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return [Face(_box_array(box), chip, e) for box, chip, e in zip(boxes, chips, emb)]


class InsightFaceEncoder(FaceEncoder):
    """ArcFace: faces with 5 keypoints (SCRFD from the pack, or dlib), insightface's norm_crop
    to 112 px, the recognition ONNX model through insightface's model zoo [512]."""

    name = "insightface"

    def __init__(self, detector, recognizer, detail: str):
        self.detector = detector      # .detect(bgr) -> boxes [n, 5], kps [n, 5, 2] (insightface order)
        self.recognizer = recognizer  # insightface ArcFaceONNX
        self.detail = detail
        self.dim = int(recognizer.output_shape[-1])

    @classmethod
    def from_pack(cls, pack: Path) -> InsightFaceEncoder:
        from insightface.app import FaceAnalysis

        app = FaceAnalysis(name=str(pack), allowed_modules=["detection", "recognition"])
        app.prepare(ctx_id=_onnx_ctx_id(), det_size=(640, 640))
        if "recognition" not in app.models:
            raise FileNotFoundError(f"insightface pack {pack} has no recognition model (*.onnx); "
                                    f"re-download it ({' or '.join(INSIGHTFACE_PACKS)})")
        return cls(app.det_model, app.models["recognition"], f"pack {pack}")

    @classmethod
    def from_recognizer_onnx(cls, onnx_path: Path) -> InsightFaceEncoder:
        from insightface.model_zoo import get_model

        if not onnx_path.is_file():
            raise FileNotFoundError(f"insightface recognition model not found: {onnx_path}")
        recognizer = get_model(str(onnx_path))
        if recognizer is None or recognizer.taskname != "recognition":
            raise ValueError(f"{onnx_path} is not a face recognition model: insightface expects "
                             "input [N, 3, 112, 112] and one output [N, D]")
        recognizer.prepare(ctx_id=_onnx_ctx_id())
        return cls(DlibKeypoints(), recognizer, f"{onnx_path.name}, faces by dlib")

    def describe(self) -> str:
        return f"insightface (ArcFace, {self.dim}-d; {self.detail})"

    def find_faces(self, image: np.ndarray, thorough: bool = False) -> list[Face]:
        from insightface.utils.face_align import norm_crop

        bgr = np.ascontiguousarray(image[..., ::-1])  # insightface works in OpenCV's BGR
        boxes, kps = self.detector.detect(bgr)         # [n, 5], [n, 5, 2]
        if len(boxes) == 0:
            return []
        size = self.recognizer.input_size[0]
        crops = [norm_crop(bgr, k, image_size=size) for k in kps]   # BGR [size, size, 3] each
        emb = np.asarray(self.recognizer.get_feat(crops), np.float32)  # [n, D]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return [Face(b[:4].astype(np.float32), c[..., ::-1].copy(), e) for b, c, e in zip(boxes, crops, emb)]


class DlibKeypoints:
    """A face detector with insightface's .detect interface, built from dlib: HOG boxes and the
    68-point landmarks reduced to ArcFace's 5 points (eye centres, nose tip, mouth corners)."""

    def __init__(self, detect_long_side: int = 640, upsample: int = 1):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(dlib_model_dir() / "shape_predictor_68_face_landmarks.dat"))
        self.detect_long_side = detect_long_side
        self.upsample = upsample

    def detect(self, bgr: np.ndarray):
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        boxes = dlib_boxes(self.detector, rgb, self.detect_long_side, self.upsample, thorough=False)
        kps = np.zeros((len(boxes), 5, 2), np.float32)  # [n, 5, 2]
        for i, box in enumerate(boxes):
            p = np.array([(q.x, q.y) for q in self.landmarks(rgb, box).parts()], np.float32)  # [68, 2]
            kps[i] = arcface_points_from_dlib68(p)
        dets = np.array([[*_box_array(b), 1.0] for b in boxes], np.float32).reshape(-1, 5)  # [n, 5]
        return dets, kps


def arcface_points_from_dlib68(p: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks [68, 2] -> insightface's 5 [5, 2]: image-left eye, image-right eye,
    nose tip, image-left and image-right mouth corner (the order of face_align.arcface_dst)."""
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def dlib_boxes(detector, image: np.ndarray, long_side: int, upsample: int, thorough: bool,
               min_score: float = DLIB_MIN_SCORE) -> list:
    """HOG face boxes (dlib.rectangle, in `image` pixels), largest first. Frames are searched on a
    copy downscaled to `long_side` (speed). `thorough` (reference photos) looks for large faces
    first (no upsampling: fewer false hits beside the person), then smaller ones, then behind a
    replicated border, which finds tightly cropped faces."""
    import dlib

    # Large frames are searched downscaled (speed); small ones (the tiny preset's 64-128 px) upscaled to
    # MIN_SEARCH_SIDE, since HOG's 80-px window with one upsampling misses faces under ~40 px.
    scale = min(1.0, long_side / max(image.shape[:2]))
    scale = max(scale, MIN_SEARCH_SIDE / max(image.shape[:2]))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation) if scale != 1 else image
    attempts = [(upsample, 0)]                           # (upsampling, border px)
    if thorough:
        attempts = [(0, 0), (upsample, 0), (upsample + 1, 0), (upsample, max(small.shape[:2]) // 4)]
    for up, pad in attempts:
        padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else small
        found, _, _ = detector.run(padded, up, min_score)
        if len(found):
            break
    boxes = [dlib.rectangle(round((r.left() - pad) / scale), round((r.top() - pad) / scale),
                            round((r.right() - pad) / scale), round((r.bottom() - pad) / scale)) for r in found]
    return sorted(boxes, key=lambda r: -r.area())


def dlib_model_dir() -> Path:
    """The weights folder of the face_recognition_models pip package. Found without importing it:
    its __init__ imports pkg_resources, which current setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the dlib ID backend needs the pip package face_recognition_models "
                          "(pip install face_recognition_models dlib-bin)")
    return Path(spec.submodule_search_locations[0]) / "models"


def _find_pack(root: Path) -> Path | None:
    """The folder holding a pack's .onnx files: root itself, root/<pack>, or root/<pack>/<pack>
    (antelopev2.zip unpacks one level deeper than insightface expects)."""
    candidates = [root] + [root / p for p in INSIGHTFACE_PACKS] + [root / p / p for p in INSIGHTFACE_PACKS]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.onnx"))), None)


def _missing_pack_message(root: Path) -> str:
    return (f"insightface backend: no model pack found in {root}. Download antelopev2.zip (or "
            f"buffalo_l.zip) from https://github.com/deepinsight/insightface/releases and unzip it "
            f"so that {root / 'antelopev2'}/*.onnx exist (scrfd_10g_bnkps.onnx, glintr100.onnx); or "
            f"pass model_root=<pack folder or recognition .onnx>; or use backend='dlib' (offline default).")


def _onnx_ctx_id() -> int:
    import onnxruntime

    return 0 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else -1


def _box_array(rect) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
