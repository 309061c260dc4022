"""face_encoders.py — the identity encoders' common interface, and the offline dlib backend.

The ID reward of MagicID (METHOD.md, "Rewards") needs, for a frame, the faces in it and an
identity embedding e (a unit vector) for each; two faces are the same person when cos(e1, e2)
is high. Every backend answers the same small interface:

    encoder.name                                    "dlib" | "insightface" | "toyface"
    encoder.describe()                              which models ran, for reports
    encoder.find_faces(image, thorough=False)       -> list[Face]   (box, aligned crop, embedding)
    encoder.embed_faces(frames, mean_ref=None)      -> emb [F, D] float32, found [F] bool

- "dlib" (here): HOG frontal detector + 5-point alignment + the ResNet face descriptor (D = 128)
  from the `face_recognition_models` pip package, averaged with the descriptor of the mirrored face
  (one photo then stands for the face, not for one way of turning it). Weights ship with pip: the
  offline default. In the frames of a video, faces that HOG misses (turned, small, dark) are
  searched again with MTCNN and where the neighbouring frames had the face (face_tracks.py).
- "insightface": ArcFace (D = 512), the paper's choice, in arcface.py, built on this file.
- "toyface": the toy world's own encoder (D = 128), in toy_face.py: a detector and a small CNN embedding,
  both trained on the world's people.

The backends' cosine scales differ, so identity thresholds are per backend: ID_CALIBRATION.
faces.make_face_encoder picks a backend; faces.load_references reads the person's photos.

Exports: Face, FaceEncoder, IdCalibration, ID_CALIBRATION, DlibFaceEncoder, dlib_boxes, dlib_model_dir, box_array.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from face_tracks import MtcnnDetector, find_faces_in_video


# HOG detection score floor. Below ~0.15 dlib's hits are mostly not faces (skimage's astronaut:
# the face scores 1.16, a patch of her flag 0.12); a real but strongly turned face can score lower
# and is then missed, and its frame counts as one without a face.
DLIB_MIN_SCORE = 0.15
# A detection this strong is surely a face (the astronaut's scores 1.16; her mission patch, after her face is
# painted over, 0.18): the floor for warning that a reference photo shows a second person.
DLIB_CONFIDENT_SCORE = 0.5
MIN_SEARCH_SIDE = 256  # px; smaller frames are upscaled to this long side before the face search


@dataclass(frozen=True)
class IdCalibration:
    same: float      # typical cosine between two photos of one person
    cross: float     # typical cosine between two different people
    delta_id: float  # recommended identity margin δ_id for pair selection


# δ_id = 0.10 is METHOD's value on the ArcFace scale. For dlib we keep δ_id the same fraction of
# the same-vs-cross gap: 0.10 / (0.60 - 0.05) = 18 % of the gap. dlib's numbers are r_id itself
# (rewards.identity_reward, 16 frames) on the 18 distinct generated videos of shared/data/faces/videos
# (4 identities), each scored against its own identity's reference frames from other videos and
# against the 3 others, with the mirror-averaged descriptor: same 0.935 ± 0.020 (18), cross 0.825 ± 0.047
# (54), AUC 0.993 -> δ_id = 0.18 × 0.110 ≈ 0.020 (the descriptor alone: 0.930, 0.821, AUC 0.987, 0.020). bench/bench_id_videos.py measures them; tests/test_id_video.py
# re-measures. ArcFace's same/cross are typical published values on generated videos (face
# similarity of identity-customised T2V models; ArcFace of unrelated people), not measured here:
# no insightface pack is available offline. "toyface" (toy_face.py, the toy world's own encoder): r_id on
# degraded videos of held-out toy-world identities (`python toyworld/identity_gate.py --backend toyface
# --identities 12 --videos 3 --degrade 1`: frames blurred σ = 1 px and through the tiny VAE, clean reference
# stills), over the 30 of 36 videos whose face is found in ≥ half the frames: same 0.466 ± 0.163 (30), cross
# 0.006 ± 0.125 (330) -> δ_id = 0.18 × 0.460 ≈ 0.083. That was with dlib's detection; with the toy detector
# (session 9) the same gate gives same 0.573, cross 0.012 over all 36 videos (δ_id by the rule 0.10): 0.083 is kept
# while the protocol's runs, started with it, finish (a --resume must see the same setting).
ID_CALIBRATION = {
    "insightface": IdCalibration(same=0.60, cross=0.05, delta_id=0.10),
    "dlib": IdCalibration(same=0.935, cross=0.825, delta_id=0.02),
    "toyface": IdCalibration(same=0.466, cross=0.006, delta_id=0.083),
}


@dataclass
class Face:
    box: np.ndarray        # [4] float x0, y0, x1, y1 in the image's pixels
    crop: np.ndarray       # uint8 [S, S, 3] RGB, aligned (dlib S=150, ArcFace S=112)
    embedding: np.ndarray  # float32 [D], unit norm

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))




class FaceEncoder:
    """Shared part of the backends: from faces per frame to one embedding per frame."""

    name = ""
    dim = 0

    def describe(self) -> str:
        return self.name

    def find_faces(self, image: np.ndarray, thorough: bool = False, confident: bool = False) -> list[Face]:
        """Faces in one image; confident: only detections that are surely faces (no borderline hits)."""
        raise NotImplementedError

    def find_video_faces(self, frames: np.ndarray) -> list[list[Face]]:
        """frames: uint8 [F, H, W, 3], in time order -> the faces of each frame. Here frame by frame;
        the dlib backend also uses the neighbouring frames."""
        return [self.find_faces(frame) for frame in frames]

    def embed_faces(self, frames: np.ndarray, mean_ref: np.ndarray | None = None):
        """frames: uint8 [F, H, W, 3], in time order -> (emb [F, D] float32, found [F] bool). The
        best face of a frame is the one closest to mean_ref when given (METHOD: best face per frame),
        else the largest; a frame without faces gets a zero row and found=False."""
        per_frame = self.find_video_faces(frames)
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
    full frame, 150-px aligned chip, ResNet descriptor [128]. In videos (find_video_faces), frames
    HOG missed are searched again by face_tracks.py (MTCNN, then where the neighbours had the face);
    video_search=False keeps HOG alone, frame by frame: the ID reward before issue 19, for comparison."""

    name = "dlib"
    dim = 128

    def __init__(self, detect_long_side: int = 640, upsample: int = 1, video_search: bool = True,
                 mirror_average: bool = True):
        import dlib

        models = dlib_model_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.detect_long_side = detect_long_side
        self.upsample = upsample
        self.mtcnn = MtcnnDetector() if video_search else None
        self.mirror_average = mirror_average

    def describe(self) -> str:
        search = "; video frames: + MTCNN + neighbour-frame search" if self.mtcnn else "; HOG frame by frame"
        mirror = ", averaged with the mirrored face's" if self.mirror_average else ""
        return f"dlib (HOG detector + face_recognition_models ResNet descriptor{mirror}, 128-d{search})"

    def find_faces(self, image: np.ndarray, thorough: bool = False, confident: bool = False) -> list[Face]:
        image = np.ascontiguousarray(image)
        min_score = DLIB_CONFIDENT_SCORE if confident else DLIB_MIN_SCORE
        return self.faces_in_boxes(image, dlib_boxes(self.detector, image, self.detect_long_side,
                                                     self.upsample, thorough, min_score))

    def find_video_faces(self, frames: np.ndarray) -> list[list[Face]]:
        if self.mtcnn is None:
            return super().find_video_faces(frames)
        return find_faces_in_video(frames, self.find_faces, self.faces_in_boxes, self.mtcnn)

    def faces_in_boxes(self, image: np.ndarray, boxes) -> list[Face]:
        """Faces at given boxes (dlib.rectangle, or [n, 4] x0 y0 x1 y1 from another detector):
        5-point landmarks in the box, aligned chip, descriptor."""
        import dlib

        image = np.ascontiguousarray(image)
        boxes = [b if isinstance(b, dlib.rectangle) else dlib.rectangle(*(int(round(v)) for v in b)) for b in boxes]
        if not boxes:
            return []
        shapes = [self.landmarks(image, box) for box in boxes]
        chips = [dlib.get_face_chip(image, shape, size=150, padding=0.25) for shape in shapes]
        emb = unit_rows(np.asarray(self.net.compute_face_descriptor(chips), np.float32))  # [n, 128]
        if self.mirror_average:  # a face and its mirror image are one person: the mean of the two descriptors
            # cancels the part that depends on which way the head is turned (the flip test of face recognition
            # benchmarks); a single photo as the reference is otherwise one pose's view of the face
            mirrored = [np.ascontiguousarray(chip[:, ::-1]) for chip in chips]
            emb = unit_rows(emb + unit_rows(np.asarray(self.net.compute_face_descriptor(mirrored), np.float32)))
        return [Face(box_array(box), chip, e) for box, chip, e in zip(boxes, chips, emb)]


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


def unit_rows(emb: np.ndarray) -> np.ndarray:
    """emb [n, D] -> each row divided by its length."""
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def box_array(rect) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
