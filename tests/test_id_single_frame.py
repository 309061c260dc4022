"""The ID reward with ONE frame of another video as the reference (issue 29, item 5): the dlib descriptor
averaged with its mirror image's, so a single photo stands for the face and not for one way of turning it.

Photos: ../shared/data/faces/idXX_v1_f0.png (frames of generated videos, see its README) and skimage's astronaut.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faces as F  # noqa: E402



@pytest.fixture(scope="module")
def encoder():
    return F.DlibFaceEncoder()


def test_a_photo_and_its_mirror_image_embed_as_one_face(encoder, faces_data):
    # A face and its mirror image are one person. Measured cos(photo, mirrored photo), dlib alone:
    # 0.986 0.989 0.990 0.996 0.993 (mean 0.991); averaged with the mirrored chip: 0.997-0.999 (mean 0.998).
    images = [np.asarray(Image.open(faces_data / f"id0{k}_v1_f0.png").convert("RGB")) for k in (1, 2, 3, 4)]
    images.append(skimage.data.astronaut())
    cosines = []
    for image in images:
        face = encoder.find_faces(image, thorough=True)[0]
        mirrored = encoder.find_faces(np.ascontiguousarray(image[:, ::-1]), thorough=True)[0]
        cosines.append(float(face.embedding @ mirrored.embedding))
    assert np.mean(cosines) >= 0.996 and min(cosines) >= 0.995


def test_the_mirror_average_is_a_unit_vector_between_the_two_descriptors(encoder):
    # float64 reference: normalize(d / |d| + d_m / |d_m|) from dlib's network on the chip and its mirror.
    face = encoder.find_faces(skimage.data.astronaut())[0]
    d = np.asarray(encoder.net.compute_face_descriptor(face.crop), np.float64)
    d_m = np.asarray(encoder.net.compute_face_descriptor(np.ascontiguousarray(face.crop[:, ::-1])), np.float64)
    expected = d / np.linalg.norm(d) + d_m / np.linalg.norm(d_m)
    np.testing.assert_allclose(face.embedding, expected / np.linalg.norm(expected), atol=1e-5)


def test_single_frame_auc_pooled_and_within_one_reference_hand_worked():
    # Reference 0 ranks its same-person video (0.90) between two others (0.80, 0.95): AUC 1/2. Reference 1 ranks
    # it (0.70) above the other (0.60): AUC 1. Within one reference: (1/2 + 1) / 2 = 0.75. Pooled: same {0.90,
    # 0.70} vs cross {0.80, 0.95, 0.60}: 0.90 beats 0.80 and 0.60, 0.70 beats 0.60 -> 3 of 6 = 0.5. Gaps over
    # δ = 0.05 under one reference: 0.90-0.80 and 0.70-0.60 of the 3 pairs -> 2/3.
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_id_videos as B
    from types import SimpleNamespace

    rows = [(0, True, 0.90), (0, False, 0.80), (0, False, 0.95), (1, True, 0.70), (1, False, 0.60)]
    pairs = [{"ref": ref, "same": same, "score": SimpleNamespace(reward=reward)} for ref, same, reward in rows]
    assert B.single_frame_auc(pairs) == pytest.approx(0.5)
    assert B.within_reference_auc(pairs) == pytest.approx(0.75)
    assert B.margin_rate(pairs, 0.05) == pytest.approx(2 / 3)
