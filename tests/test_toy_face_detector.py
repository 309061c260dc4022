"""toyworld/train_face_detector.py and toy_face.ToyFaceDetector: the targets and their decoding by hand, the dlib-like box, the shipped detector."""

import math

import numpy as np
import pytest
import torch

import toy_face
from toyworld import train_face_detector as fd
from toyworld import identities, world as toy


def test_targets_by_hand():
    # A head centred at (36, 52) px with half-height 20: cell (row 52 // 8, col 36 // 8) = (6, 4), offset
    # (36 / 8 - 4, 52 / 8 - 6) = (0.5, 0.5), size log(20 / 128); σ = max(0.7, 20 / 24) cells; no head: nothing.
    heat, mask, size, offset = fd.targets(np.array([[36.0, 52.0, 20.0], [0.0, 0.0, 0.0]]))
    assert mask[0].nonzero().tolist() == [[6, 4]] and not mask[1].any()
    assert heat[0, 6, 4] == 1.0 and heat[1].abs().sum() == 0
    sigma = 20 / 24
    assert heat[0, 6, 6].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-5)
    assert size[0, 6, 4].item() == pytest.approx(math.log(20 / 128), rel=1e-6)
    assert offset[0, :, 6, 4].tolist() == [0.5, 0.5]


def test_decode_inverts_the_targets():
    # The output a perfect net would give (heat logit, log size, offset logits) decodes to the dlib-like box of
    # each head; fresh random heads, one per image.
    rng = np.random.default_rng(0)
    heads = np.stack([rng.uniform(20, 108, 5), rng.uniform(20, 108, 5), rng.uniform(10, 50, 5)], 1)
    heat, mask, size, offset = fd.targets(heads)
    out = torch.cat([torch.logit(heat.clamp(1e-6, 1 - 1e-6))[:, None], size[:, None],
                     torch.logit(offset.clamp(1e-6, 1 - 1e-6))], 1)
    found = toy_face.decode(out, threshold=0.99)
    for faces, (cx, cy, half) in zip(found, heads):
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0][0], fd.head_to_face_box(cx, cy, half), atol=1e-3)


def test_the_face_box_is_where_dlib_draws_it():
    from faces import DlibFaceEncoder

    encoder = DlibFaceEncoder(video_search=False)
    videos, _, _, heads = identities.render_identity_videos(list(range(1_000_900, 1_000_910)), toy.ToyWorld("cpu", seed=3),
                                                            frames=1, size=128, motions=["still"] * 10, with_faces=True)
    ious = []
    for frame, head in zip(toy.to_uint8(videos)[:, 0], heads[:, 0]):
        faces = encoder.find_faces(frame)
        if faces:
            ious.append(iou(faces[0].box, fd.head_to_face_box(*head)))
    assert len(ious) >= 4 and min(ious) > 0.6, ious


def test_the_shipped_detector_finds_heldout_faces_and_few_elsewhere():
    # Held-out identities (never in its training) clean and degraded; subjects without people. Measured
    # (python toyworld/train_face_detector.py --check, 24 identities): hits 1.000 / 1.000, false positives 0.04 / 0.06.
    result = fd.check_on_renders(fd.ToyFaceDetector(), identities_n=6, first=1_000_950, seed=11)
    assert result["people, clean"]["hit_rate"] >= 0.95 and result["people, degraded"]["hit_rate"] >= 0.9
    assert result["no one, clean"]["false_positive_rate"] <= 0.2


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_two_peaks_of_one_head_are_one_face_and_two_heads_are_two():
    # Heat peaks at cells (6, 4) and (6, 6) (not neighbours, so both survive the 3x3 max-pool). With heads of
    # half-height 40 px each peak's box (±30.6 px) holds the other's centre (16 px away): one face, the stronger.
    # With half-height 8 px (±6.1 px) they are two faces.
    for half, faces_expected in ((40.0, 1), (8.0, 2)):
        out = torch.zeros(1, 4, 16, 16)
        out[0, 0] = -10.0
        out[0, 0, 6, 4], out[0, 0, 6, 6] = 3.0, 2.0
        out[0, 1] = math.log(half / 128)
        found = toy_face.decode(out, threshold=0.5)[0]
        assert len(found) == faces_expected
        assert found[0][1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
