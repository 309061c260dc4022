"""Photos of different people passed as one person's references (issue 29, item 6): faces.different_people_message
names the pairs that do not look like one person, before anything heavy loads; photos of one person pass.

Photos: ../shared/data/faces/idXX_vK_fJ.png, frames of generated videos of four identities (see its README).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faces as F  # noqa: E402



@pytest.fixture(scope="module")
def encoder():
    return F.make_face_encoder("dlib")


def hand_made_references(embeddings) -> F.References:
    embeddings = np.asarray(embeddings, np.float32)  # [N, D] unit rows
    return F.References(np.zeros((len(embeddings), 1, 1, 3), np.uint8), embeddings,
                        F.mean_unit_embedding(embeddings), "dlib", [f"p{i}.jpg" for i in range(len(embeddings))])


def test_the_rule_hand_worked():
    # dlib's calibration: same 0.935, cross 0.825 -> two photos count as two people below the midpoint 0.880.
    # [1, 0] and [0.8, 0.6]: cosine 0.80 < 0.880; [1, 0] and [0.95, 0.3122]: cosine 0.95 >= 0.880.
    assert F.different_people_message(hand_made_references([[1, 0], [0.95, 0.3122499]])) is None
    message = F.different_people_message(hand_made_references([[1, 0], [0.95, 0.3122499], [0.8, 0.6]]))
    # pairs (0, 2): 0.800 and (1, 2): 0.95·0.8 + 0.3122·0.6 = 0.947 -> only p0 ~ p2 is named
    assert "p0.jpg ~ p2.jpg 0.800" in message and "p1.jpg ~ p2.jpg" not in message and "p0.jpg ~ p1.jpg" not in message
    assert "0.880" in message and "δ_id = 0.020" in message


def test_four_photos_of_one_person_pass(encoder, faces_data):
    # id01: two videos, early and late frame of each; the lowest pair (other video, other frame) scores 0.905.
    refs = F.load_references(sorted(faces_data.glob("id01_v*_f*.png")), encoder)
    assert len(refs.paths) == 4 and F.different_people_message(refs) is None


def test_photos_of_two_people_are_named_with_their_cosine(encoder, faces_data):
    refs = F.load_references([faces_data / "id01_v1_f0.png", faces_data / "id03_v1_f0.png"], encoder)
    message = F.different_people_message(refs)
    assert message is not None and "id01_v1_f0.png ~ id03_v1_f0.png" in message
    recorded = float(message.split("id03_v1_f0.png ")[1][:5])
    assert recorded == pytest.approx(0.808, abs=0.01)  # measured 2026-12-05 (dlib, mirror-averaged)


def test_one_intruder_among_one_persons_photos_is_the_one_named(encoder, faces_data):
    photos = [faces_data / "id02_v1_f0.png", faces_data / "id02_v2_f0.png", faces_data / "id04_v1_f0.png"]
    message = F.different_people_message(F.load_references(photos, encoder))
    assert "id02_v1_f0.png ~ id04_v1_f0.png" in message and "id02_v2_f0.png ~ id04_v1_f0.png" in message
    assert "id02_v1_f0.png ~ id02_v2_f0.png" not in message
