"""faces.py — who is in a picture: face encoders, and the reference photos of the person to customize.

The ID reward of MagicID (METHOD.md, "Rewards") needs, for a frame, the faces in it and an
identity embedding e (a unit vector) for each; two faces are the same person when cos(e1, e2)
is high. Two backends sit behind one small interface:

    encoder.name                                    "dlib" | "insightface"
    encoder.describe()                              which models ran, for reports
    encoder.find_faces(image, thorough=False)       -> list[Face]   (box, aligned crop, embedding)
    encoder.embed_faces(frames, mean_ref=None)      -> emb [F, D] float32, found [F] bool

- "dlib": HOG frontal detector + 5-point alignment + the ResNet face descriptor (D = 128) from
  the `face_recognition_models` pip package. Weights ship with pip: the offline default. In the
  frames of a video, faces that HOG misses (turned, small, dark) are searched again with MTCNN
  and where the neighbouring frames had the face (face_tracks.py).
- "insightface": ArcFace (D = 512), the paper's choice, from a local model pack (arcface.py).

The backends' cosine scales differ, so identity thresholds are per backend: ID_CALIBRATION.

Reference photos (MagicID's input: 1..N photos of one person) are read here too, EXIF-upright and
checked at the door: load_references finds the one face of each photo (the largest, with a warning,
if several), embeds it, and keeps ē = normalize(mean_i e_i), the embedding r_id compares to.
Anything unusable raises one ReferencePhotoError naming the file and the fix.

Exports: Face, FaceEncoder, ID_CALIBRATION, make_face_encoder, DlibFaceEncoder, dlib_boxes;
load_references, References, ReferencePhotoError, read_photo, mean_unit_embedding.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from face_tracks import MtcnnDetector, find_faces_in_video

# HOG detection score floor. Below ~0.15 dlib's hits are mostly not faces (skimage's astronaut:
# the face scores 1.16, a patch of her flag 0.12); a real but strongly turned face can score lower
# and is then missed, and its frame counts as one without a face.
DLIB_MIN_SCORE = 0.15
# A detection this strong is surely a face (the astronaut's scores 1.16; her mission patch, after her face is
# painted over, 0.18): the floor for warning that a reference photo shows a second person.
DLIB_CONFIDENT_SCORE = 0.5
MIN_SEARCH_SIDE = 256  # px; smaller frames are upscaled to this long side before the face search
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MIN_PHOTO_SIDE = 64     # px; below this no detector finds a face worth an identity embedding


@dataclass(frozen=True)
class IdCalibration:
    same: float      # typical cosine between two photos of one person
    cross: float     # typical cosine between two different people
    delta_id: float  # recommended identity margin δ_id for pair selection


# δ_id = 0.10 is METHOD's value on the ArcFace scale. For dlib we keep δ_id the same fraction of
# the same-vs-cross gap: 0.10 / (0.60 - 0.05) = 18 % of the gap. dlib's numbers are r_id itself
# (rewards.identity_reward, 16 frames) on the 18 distinct generated videos of shared/data/faces/videos
# (4 identities), each scored against its own identity's reference frames from other videos and
# against the 3 others: same 0.930 ± 0.021 (18), cross 0.821 ± 0.049 (54), AUC 0.99 ->
# δ_id = 0.18 × 0.109 ≈ 0.020. bench/bench_id_videos.py measures them; tests/test_id_video.py
# re-measures. ArcFace's same/cross are typical published values on generated videos (face
# similarity of identity-customised T2V models; ArcFace of unrelated people), not measured here:
# no insightface pack is available offline.
ID_CALIBRATION = {
    "insightface": IdCalibration(same=0.60, cross=0.05, delta_id=0.10),
    "dlib": IdCalibration(same=0.930, cross=0.821, delta_id=0.02),
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
    import arcface  # the ArcFace backend builds on this file's Face, FaceEncoder and dlib_boxes

    root = Path(model_root).expanduser() if model_root is not None else arcface.INSIGHTFACE_ROOT
    if backend == "auto":
        backend = "insightface" if root.suffix == ".onnx" or arcface.find_pack(root) is not None else "dlib"
    if backend == "dlib":
        encoder = DlibFaceEncoder()
    elif root.suffix == ".onnx":
        encoder = arcface.InsightFaceEncoder.from_recognizer_onnx(root)
    else:
        pack = arcface.find_pack(root)
        if pack is None:
            raise FileNotFoundError(arcface.missing_pack_message(root))
        encoder = arcface.InsightFaceEncoder.from_pack(pack)
    print(f"ID encoder: {encoder.describe()}", file=sys.stderr)
    return encoder


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

    def __init__(self, detect_long_side: int = 640, upsample: int = 1, video_search: bool = True):
        import dlib

        models = dlib_model_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.detect_long_side = detect_long_side
        self.upsample = upsample
        self.mtcnn = MtcnnDetector() if video_search else None

    def describe(self) -> str:
        search = "; video frames: + MTCNN + neighbour-frame search" if self.mtcnn else "; HOG frame by frame"
        return f"dlib (HOG detector + face_recognition_models ResNet descriptor, 128-d{search})"

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
        emb = np.asarray(self.net.compute_face_descriptor(chips), np.float32)  # [n, 128]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
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


def box_array(rect) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)


# ---------------------------------------------------------------------- reference photos

class ReferencePhotoError(ValueError):
    """A reference photo cannot be used; the message names the file and what to do."""


@dataclass
class References:
    crops: np.ndarray           # uint8 [N, S, S, 3] aligned face crops, RGB
    embeddings: np.ndarray      # float32 [N, D] unit rows
    mean_embedding: np.ndarray  # float32 [D] unit: ē, what r_id compares to
    backend: str                # the encoder's name; r_id must use the same backend
    paths: list[str]


def load_references(paths, encoder: FaceEncoder) -> References:
    """Reference photos (files, or folders of image files) -> aligned crops and embeddings.
    Several faces in a photo: the largest, with a warning. Anything unusable: ReferencePhotoError."""
    files = _photo_files(paths)
    faces = [_the_face(path, read_photo(path), encoder) for path in files]
    embeddings = np.stack([face.embedding for face in faces])  # [N, D]
    return References(crops=np.stack([face.crop for face in faces]), embeddings=embeddings,
                      mean_embedding=mean_unit_embedding(embeddings), backend=encoder.name,
                      paths=[str(p) for p in files])


def read_photo(path: Path) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB, upright per its EXIF orientation; grey, palette,
    RGBA (on white), CMYK and 16-bit inputs converted."""
    try:
        with warnings.catch_warnings():  # PIL's size limit (~89 Mpx warns, twice that fails) holds as an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise ReferencePhotoError(f"reference photo not found: {path}. Check the path.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ReferencePhotoError(f"{path} is too large to read safely ({err}). Resize it, e.g. to 4000 px on "
                                  f"its long side: a face needs a few hundred pixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ReferencePhotoError(f"cannot read {path} as an image ({err}). Give a JPEG, PNG, WebP, "
                                  f"BMP or TIFF photo of the person.") from None
    return _to_rgb8(img)


def mean_unit_embedding(embeddings: np.ndarray) -> np.ndarray:
    """ē = normalize(mean_i e_i / ‖e_i‖): embeddings [N, D] -> [D] float32."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mean = unit.mean(0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def _photo_files(paths) -> list[Path]:
    """Files named directly must exist (read_photo says so otherwise); folders give their images."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
            if not found:
                raise ReferencePhotoError(f"no image files ({', '.join(sorted(PHOTO_SUFFIXES))}) in the "
                                          f"folder {path}. Put the person's photos there.")
            files += found
        else:
            files.append(path)
    if not files:
        raise ReferencePhotoError("no reference photos given: pass one or more photos of the person "
                                  "(or a folder of them)")
    return files


def _the_face(path: Path, image: np.ndarray, encoder: FaceEncoder):
    """The one face of a reference photo: the largest (warning if several), else an error."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_PHOTO_SIDE:
        raise ReferencePhotoError(f"{path} is only {w}×{h} px, too small for a face: use a photo at "
                                  f"least {MIN_PHOTO_SIDE} px on its short side (ideally a face ≥ 100 px wide)")
    faces = encoder.find_faces(image, thorough=True)
    if not faces:
        raise ReferencePhotoError(f"no face found in {path} ({w}×{h} px, {encoder.name} detector). Use a "
                                  f"photo with one clearly visible, roughly frontal face at least ~60 px wide")
    largest = max(faces, key=lambda face: face.area)
    # The thorough search stops at its first pass that finds a face, so a smaller second face (found only
    # by a later, finer pass) is missed; a second search with the found faces painted over finds it.
    if len(faces) == 1:
        faces += encoder.find_faces(_painted_over(image, faces), thorough=True, confident=True)
    found = len(faces)
    if found > 1:
        bw, bh = largest.box[2] - largest.box[0], largest.box[3] - largest.box[1]
        warnings.warn(f"{path}: {found} or more faces found; using the largest ({bw:.0f}×{bh:.0f} px). "
                      f"Crop the photo to the person to be sure.", stacklevel=3)
    return largest


def _painted_over(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of `image` [H, W, 3] with each face's box filled with the image's mean colour."""
    out = image.copy()
    for face in faces:
        x0, y0, x1, y1 = np.clip(np.round(face.box).astype(int), 0, None)
        out[y0:y1, x0:x1] = image.reshape(-1, 3).mean(0).astype(np.uint8)
    return out


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # 16-bit / int / float grey
        grey = np.asarray(img, np.float64)
        top = 1.0 if grey.max() <= 1.0 and img.mode == "F" else (255.0 if grey.max() <= 255 else 65535.0)
        grey = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))
