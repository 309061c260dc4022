"""The ID reward on real generated videos (issue 19): faces found the way a video tool finds them,
and r_id read over the frames with a face, with face presence as its own number.

Videos: ../shared/data/faces/videos (19 generated videos of identities id01..id04, 61 frames,
640x360) and ../shared/data/faces/id01_clip.mp4 (320x192); references: the identities' frames
../shared/data/faces/idXX_vK_fJ.png that come from another video than the one scored (see its README).
"""

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_id_videos as B  # noqa: E402
import face_tracks  # noqa: E402
import faces as F  # noqa: E402
import media  # noqa: E402
import rewards as R  # noqa: E402

DELTA_ID = F.ID_CALIBRATION["dlib"].delta_id


class RememberedFaces(F.DlibFaceEncoder):
    """The dlib encoder (make_face_encoder("dlib")'s), answering a second search of the same pixels with the
    first one's faces. The 16 reference photos are read by load_references again for every video and identity
    scored (a thorough search and mirrored descriptors: ~1 s a photo, ~100 s of this file); the search is
    deterministic, so the numbers are those of a fresh search. Costs are timed on a fresh encoder instead."""

    def __init__(self):
        super().__init__()
        self.seen = {}  # (sha1 of the pixels, shape, thorough, confident) -> [Face]

    def find_faces(self, image: np.ndarray, thorough: bool = False, confident: bool = False) -> list[F.Face]:
        image = np.ascontiguousarray(image)
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape, thorough, confident)
        if key not in self.seen:
            self.seen[key] = super().find_faces(image, thorough, confident)
        return list(self.seen[key])  # a copy: faces._the_face appends to the list it gets


@pytest.fixture(scope="module")
def encoder():
    return RememberedFaces()


@pytest.fixture(scope="module")
def scorer(encoder, faces_data):
    """One B.DevScorer for the file: each video's faces are searched once (B.FacesFoundOnce)."""
    return B.DevScorer(encoder)


@pytest.fixture(scope="module")
def videos(faces_data):  # B.FACES: the folder faces_data found (or a skip)
    return {v["video"]: v for v in B.dev_videos()}


@pytest.fixture(scope="module")
def references(encoder, scorer):
    photos = scorer.photos  # B.reference_photos: identity -> [(source video, photo)]

    def load(identity, exclude_source=None):
        return F.load_references([path for source, path in photos[identity] if source != exclude_source], encoder)
    return load


# ---- the rule: r_id over the frames with a face, shrunk when the face is rarely there -----------

def test_identity_from_frames_hand_worked():
    cos = np.array([0.9, 0.0, 0.8, 0.0], np.float32)
    found = np.array([True, False, True, False])
    assert R.identity_from_frames(cos, found) == pytest.approx(0.85)        # p = 0.5 = p_min: the plain mean
    one_of_eight = np.zeros(8, bool)
    one_of_eight[3] = True
    assert R.identity_from_frames(np.full(8, 0.8), one_of_eight) == pytest.approx(0.8 * (1 / 8) / 0.5)
    assert R.identity_from_frames(np.zeros(16), np.zeros(16, bool)) == 0.0  # no face: 0


def test_identity_from_frames_matches_float64_reference():
    rng = np.random.default_rng()
    for _ in range(20):
        n = int(rng.integers(1, 40))
        cos, found = rng.uniform(-0.2, 1.0, n).astype(np.float32), rng.random(n) < rng.random()
        p = found.mean()
        expected = 0.0 if p == 0 else min(1.0, p / 0.5) * sum(float(c) for c, f in zip(cos, found) if f) / found.sum()
        assert R.identity_from_frames(cos, found) == pytest.approx(expected, abs=1e-6)


# ---- real generated videos ----------------------------------------------------------------------

def test_a_video_without_a_person_scores_zero(encoder, videos, references):
    # The right part of two dev videos, where the person never is: neon street, fire and brick.
    street = videos["id04_v2"]["frames"][:, :, 300:]                      # [61, 360, 340, 3]
    fire = videos["id02_v4"]["frames"][:, :, 400:]                        # [61, 360, 240, 3]
    for scene in (street, fire):
        score = R.identity_reward(np.ascontiguousarray(scene), references("id04"), encoder)
        assert score.face_hit_rate == 0.0 and score.reward == 0.0


def test_turning_the_head_scores_within_delta_id_of_facing_the_camera(scorer, videos, references):
    # id01_v6: the pilot faces the camera for frames 0-28, then turns his head to a three-quarter view.
    # HOG finds him in 8 of the 16 sampled frames; a turned head must not read as someone else.
    # (scorer.once: the dlib encoder, its search of these 16 frames kept for dev_scores' row of id01_v6)
    video = videos["id01_v6"]
    refs = references("id01", exclude_source=video["source"])
    frontal = R.identity_reward(video["frames"][:29], refs, scorer.once)
    turning = R.identity_reward(video["frames"], refs, scorer.once)
    assert frontal.face_hit_rate == 1.0 and turning.face_hit_rate >= 0.9
    assert abs(turning.reward - frontal.reward) <= DELTA_ID
    hog_only = R.identity_reward(video["frames"], refs, F.DlibFaceEncoder(video_search=False))
    assert hog_only.face_hit_rate <= 0.6  # the case is real: frame by frame HOG misses the turned head


def test_a_small_face_in_a_wide_shot_is_found(encoder, references):
    # id01_clip.mp4: 320x192, a face about 21 px high; HOG finds it in none of the frames. Found, but not
    # identified: at 21 px dlib's r_id is 0.86 for id01 and 0.83-0.89 for the others, so only presence is pinned.
    clip = media.read_video(str(B.FACES / "id01_clip.mp4"))
    score = R.identity_reward(clip, references("id01", exclude_source="static/images/videos/demo/4.mp4"), encoder)
    assert score.face_hit_rate >= 0.9 and score.reward > 0.8


def test_dark_lowered_faces_are_found_where_the_neighbouring_frames_had_them(scorer, videos):
    # id03_v3: a dark street at night, head lowered, sunglasses. HOG: 0 of 16 frames; MTCNN on the whole
    # frame: 11; the search in the region of the neighbouring frames' faces finds 4 of the other 5.
    row = scorer.score(videos["id03_v3"])  # r_id against each identity, one face search
    assert row["face_hit_rate"] >= 15 / 16
    assert row["r_id"]["id03"] > max(row["r_id"][other] for other in ("id01", "id02", "id04"))


def test_the_search_costs_at_most_three_times_todays_reward(videos):
    # CPU seconds to find the faces of one video's 16 sampled frames. Today's cost: HOG frame by frame on a
    # video where it finds every face (id02_v1: 16 descriptors). The worst case now: id01_v1, where HOG finds
    # 1 face and MTCNN searches the other 15 frames (measured: 3.2 s vs 2.3 s).
    frames = {name: videos[name]["frames"][R.sample_frame_indices(61, 16)] for name in ("id02_v1", "id01_v1")}
    today, now = F.DlibFaceEncoder(video_search=False), F.make_face_encoder("dlib")  # fresh: nothing remembered
    start = time.process_time()
    assert sum(map(bool, today.find_video_faces(frames["id02_v1"]))) == 16
    todays_cost = time.process_time() - start
    start = time.process_time()
    assert sum(map(bool, now.find_video_faces(frames["id01_v1"]))) == 16
    assert time.process_time() - start <= 3 * todays_cost


def test_the_neighbour_search_takes_only_a_face_of_the_neighbours_size():
    # skimage's astronaut: one face, about 90 px, at x 175-265, y 76-166. Where the neighbouring frames had
    # this face, the search finds it; where they had two 30-px faces spanning the same place, a 90-px face is
    # not theirs (a face does not grow 3x in a quarter second) and the search returns nothing.
    image = skimage.data.astronaut()
    mtcnn = face_tracks.MtcnnDetector()
    same_size = face_tracks._search_where_the_neighbours_were(image, np.array([[175, 76, 265, 166]], np.float32), mtcnn)
    assert len(same_size) == 1 and np.allclose(same_size[0], [175, 76, 265, 166], atol=25)
    small = np.array([[175, 76, 205, 106], [235, 136, 265, 166]], np.float32)  # [2, 4], union = the face
    assert len(face_tracks._search_where_the_neighbours_were(image, small, mtcnn)) == 0


@pytest.fixture(scope="module")
def dev_scores(scorer, videos):
    return [scorer.score(video) for video in videos.values()]  # B.score_dev_videos' rows; ~75 s CPU: 18 x 16 frames


@pytest.mark.slow
def test_r_id_tells_the_person_from_other_people_on_real_generated_videos(dev_scores):
    same, cross = B.same_and_cross(dev_scores)
    assert B.auc(same, cross) >= 0.95  # before issue 19: 0.67


@pytest.mark.slow
def test_faces_are_found_in_nearly_all_sampled_frames(dev_scores):
    hit = [row["face_hit_rate"] for row in dev_scores]
    assert np.mean(hit) >= 0.95 and min(hit) >= 0.8  # before issue 19: 0.73 (0.69 with the duplicate), per video 0.00..1.00


@pytest.mark.slow
def test_dlib_calibration_is_these_videos_measured(dev_scores):
    same, cross = B.same_and_cross(dev_scores)
    calibration = F.ID_CALIBRATION["dlib"]
    assert same.mean() == pytest.approx(calibration.same, abs=0.01)
    assert cross.mean() == pytest.approx(calibration.cross, abs=0.01)
    assert calibration.delta_id == pytest.approx(B.DELTA_FRACTION * (calibration.same - calibration.cross), abs=0.002)
