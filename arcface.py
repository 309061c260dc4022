"""arcface.py — the paper's ID encoder: insightface ArcFace behind faces.py's FaceEncoder interface.

MagicID measures identity with ArcFace (D = 512): two faces are the same person when the cosine of
their embeddings is high. The weights come from a local insightface model pack (antelopev2 /
buffalo_l: an SCRFD detector with 5 keypoints + the ArcFace recogniser) or from a lone recognition
.onnx, whose faces are then found with dlib's HOG detector and 68-point landmarks reduced to
ArcFace's 5 points. faces.make_face_encoder picks this backend when a pack is on disk ("auto"), or
when asked for ("insightface"): then a missing pack is fetched by insightface's own downloader
(download_pack: antelopev2.zip from insightface's GitHub release, unzipped into
~/.insightface/models/antelopev2/, about 360 MB). Licence: insightface's code is MIT, but its
pretrained packs are for non-commercial research only (insightface's README, "Model Zoo").

Exports: InsightFaceEncoder, DlibKeypoints, arcface_points_from_dlib68, find_pack, download_pack,
missing_pack_message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from face_encoders import Face, FaceEncoder, box_array, dlib_boxes, dlib_model_dir

INSIGHTFACE_PACKS = ("antelopev2", "buffalo_l")
INSIGHTFACE_ROOT = Path("~/.insightface/models").expanduser()


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

    def find_faces(self, image: np.ndarray, thorough: bool = False, confident: bool = False) -> list[Face]:
        """SCRFD's own threshold (0.5) already keeps confident faces only: `thorough` and `confident` change nothing."""
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
        dets = np.array([[*box_array(b), 1.0] for b in boxes], np.float32).reshape(-1, 5)  # [n, 5]
        return dets, kps


def arcface_points_from_dlib68(p: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks [68, 2] -> insightface's 5 [5, 2]: image-left eye, image-right eye,
    nose tip, image-left and image-right mouth corner (the order of face_align.arcface_dst)."""
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def find_pack(root: Path) -> Path | None:
    """The folder holding a pack's .onnx files: root itself, root/<pack>, or root/<pack>/<pack>
    (antelopev2.zip unpacks one level deeper than insightface expects)."""
    candidates = [root] + [root / p for p in INSIGHTFACE_PACKS] + [root / p / p for p in INSIGHTFACE_PACKS]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.onnx"))), None)


def download_pack(root: Path, pack: str = INSIGHTFACE_PACKS[0]) -> Path:
    """Fetch `pack` with insightface's own downloader (insightface.utils.storage.ensure_available: the zip
    from its GitHub release, unzipped into root/pack) -> the folder of its .onnx files. Offline, or any
    failure: FileNotFoundError with missing_pack_message, which says how to put the pack there by hand."""
    import zipfile

    from insightface.utils.storage import ensure_available

    print(f"insightface backend: no model pack in {root}; downloading {pack} there with insightface's "
          f"downloader (non-commercial research licence)", file=sys.stderr)
    try:  # ensure_available(sub_dir, name, root) unzips into root/sub_dir/name
        ensure_available(root.name, pack, root=str(root.parent))
    except (OSError, RuntimeError, zipfile.BadZipFile) as err:  # requests' errors are OSErrors
        reason = str(err).split("(Caused by")[0].strip()
        raise FileNotFoundError(f"{missing_pack_message(root)} (download failed: {reason})") from None
    found = find_pack(root)
    if found is None:
        raise FileNotFoundError(missing_pack_message(root))
    return found


def missing_pack_message(root: Path) -> str:
    """How to put a pack in `root` by hand, in one line (offline machines)."""
    return (f"insightface backend: no model pack found in {root}. On a machine with internet run "
            f"python -c \"from insightface.utils.storage import ensure_available as get; get('models', "
            f"'antelopev2')\" and copy ~/.insightface/models/antelopev2 to {root / 'antelopev2'} (or unzip "
            f"antelopev2.zip from https://github.com/deepinsight/insightface/releases there; non-commercial "
            f"research licence); or pass model_root=<pack folder or recognition .onnx>; or use backend='dlib' "
            f"(offline default).")


def _onnx_ctx_id() -> int:
    import onnxruntime

    return 0 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else -1
