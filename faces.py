"""faces.py — who is in a picture: the ID encoder to use, and the reference photos of the person to customize.

The ID reward of MagicID (METHOD.md, "Rewards") compares identity embeddings e (unit vectors) of
faces: two faces are the same person when cos(e1, e2) is high. Three backends answer one interface
(face_encoders.py): "dlib" (face_encoders.py, offline, weights from pip, D = 128), "insightface"
(arcface.py: ArcFace, D = 512, the paper's choice) and "toyface" (toy_face.py: the toy world's own
encoder, a detector and a CNN trained on the world's people, D = 128). make_face_encoder picks one
and says which.

Reference photos (MagicID's input: 1..N photos of one person) are read here, EXIF-upright and
checked at the door: load_references finds the one face of each photo (the largest, with a warning,
if several), embeds it, and keeps ē = normalize(mean_i e_i), the embedding r_id compares to.
Anything unusable raises one ReferencePhotoError naming the file and the fix. Photos of different
people given as one person's are told apart before anything heavy loads: different_people_message.

Imports flow one way: face_encoders -> arcface, toy_face -> faces -> rewards -> judges (toy_face, which
needs torch, only when asked for).

Exports: make_face_encoder; load_references, References, ReferencePhotoError, read_photo,
mean_unit_embedding, different_people_message; and, from face_encoders, Face, FaceEncoder,
DlibFaceEncoder, IdCalibration, ID_CALIBRATION, DLIB_MIN_SCORE (callers name them faces.X).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import arcface
from face_encoders import (DLIB_MIN_SCORE, ID_CALIBRATION, DlibFaceEncoder, Face, FaceEncoder,  # noqa: F401
                           IdCalibration)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MIN_PHOTO_SIDE = 64     # px; below this no detector finds a face worth an identity embedding


def make_face_encoder(backend: str = "auto", model_root: str | Path | None = None) -> FaceEncoder:
    """The ID encoder. backend: "auto" (insightface when a pack is on disk or model_root is a
    .onnx, else dlib), "dlib", "insightface" (a missing pack is downloaded: arcface.download_pack) or "toyface"
    (the toy world's, never picked by "auto"). model_root (insightface): a pack folder, a folder of packs
    (default ~/.insightface/models), or one recognition .onnx; (toyface) its weights folder (default
    weights/toyface). Prints which backend runs."""
    if backend not in ("auto", "dlib", "insightface", "toyface"):
        raise ValueError(f"unknown ID backend {backend!r}: use 'auto', 'dlib', 'insightface' or 'toyface'")
    root = Path(model_root).expanduser() if model_root is not None else arcface.INSIGHTFACE_ROOT
    if backend == "auto":
        backend = "insightface" if root.suffix == ".onnx" or arcface.find_pack(root) is not None else "dlib"
    if backend == "dlib":
        encoder = DlibFaceEncoder()
    elif backend == "toyface":
        import toy_face

        encoder = toy_face.ToyFaceEncoder(model_root if model_root is not None else toy_face.TOYFACE_WEIGHTS)
    elif root.suffix == ".onnx":
        encoder = arcface.InsightFaceEncoder.from_recognizer_onnx(root)
    else:
        pack = arcface.find_pack(root) or arcface.download_pack(root)  # asked for by name: fetch it
        encoder = arcface.InsightFaceEncoder.from_pack(pack)
    print(f"ID encoder: {encoder.describe()}", file=sys.stderr)
    return encoder


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


def different_people_message(refs: References) -> str | None:
    """None when the reference photos look like one person, else one message naming the pairs that do not,
    with their cosine, the backend's typical same- and different-person values and its δ_id.

    Rule: two photos are "not one person" when their cosine is below the midpoint of ID_CALIBRATION's
    same and cross values (dlib 0.880, ArcFace 0.325): closer to what two people score than to what one
    person scores. Callers warn, not refuse, and that is deliberate: on the dev photos (shared/data/faces,
    4 generated identities, dlib) one person's photo pairs score 0.905-0.999 while different people's
    reach 0.914 (mean 0.81; 16 of 84 pairs above 0.880), so the two ranges overlap and the check can neither catch every mix-up nor be
    sure of one; a refusal would stop runs whose photos are fine. Said before the model loads, the warning
    costs nothing; the identity stage would otherwise learn ē, the average of two faces, silently."""
    calibration = ID_CALIBRATION[refs.backend]
    threshold = (calibration.same + calibration.cross) / 2
    cos = refs.embeddings @ refs.embeddings.T                                  # [N, N]
    first, second = np.nonzero(np.triu(cos < threshold, k=1))                 # pairs i < j below it
    if len(first) == 0:
        return None
    pairs = ", ".join(f"{Path(refs.paths[i]).name} ~ {Path(refs.paths[j]).name} {cos[i, j]:.3f}"
                      for i, j in zip(first, second))
    return (f"the reference photos may show different people: {pairs} (cosine, {refs.backend}; one person's "
            f"photos typically {calibration.same:.3f}, different people {calibration.cross:.3f}, below "
            f"{threshold:.3f} counts as two; pair selection trusts r_id gaps of δ_id = {calibration.delta_id:.3f}). "
            f"The identity stage would learn the average of their faces: pass photos of one person only.")


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
