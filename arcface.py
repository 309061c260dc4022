"""arcface.py — the paper's ID encoder: insightface ArcFace behind faces.py's FaceEncoder interface.

MagicID measures identity with ArcFace (D = 512): two faces are the same person when the cosine of
their embeddings is high. The weights come from a local insightface model pack (antelopev2 /
buffalo_l: an SCRFD detector with 5 keypoints + the ArcFace recogniser) or from a lone recognition
.onnx, whose faces are then found with dlib's HOG detector and 68-point landmarks reduced to
ArcFace's 5 points. Nothing is downloaded: faces.make_face_encoder picks this backend when a pack
is on disk.

Exports: InsightFaceEncoder, DlibKeypoints, arcface_points_from_dlib68, find_pack, missing_pack_message.
"""

from __future__ import annotations

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


def missing_pack_message(root: Path) -> str:
    return (f"insightface backend: no model pack found in {root}. Download antelopev2.zip (or "
            f"buffalo_l.zip) from https://github.com/deepinsight/insightface/releases and unzip it "
            f"so that {root / 'antelopev2'}/*.onnx exist (scrfd_10g_bnkps.onnx, glintr100.onnx); or "
            f"pass model_root=<pack folder or recognition .onnx>; or use backend='dlib' (offline default).")


def _onnx_ctx_id() -> int:
    import onnxruntime

    return 0 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else -1
