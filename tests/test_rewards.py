"""Tests for rewards.py and faces.py: offline, real weights, real photos.

Photos: skimage.data.astronaut() (Eileen Collins, NASA, public domain; ships with scikit-image),
Tom_Hanks_54745.png and t1.jpg (a group photo) from the insightface pip package's data/images,
and the generated identities id01..id04 of ../shared/data/faces (see its README).
"""

import importlib.util
import itertools
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's modules are flat top-level files

import faces as F  # noqa: E402
import rewards as R  # noqa: E402
from arcface import InsightFaceEncoder  # noqa: E402
from faces import ID_CALIBRATION, DlibFaceEncoder, make_face_encoder  # noqa: E402

INSIGHTFACE_IMAGES = Path(importlib.util.find_spec("insightface").submodule_search_locations[0]) / "data" / "images"
ASTRONAUT = skimage.data.astronaut()  # uint8 [512, 512, 3], one face at about x 175-265, y 76-166


@pytest.fixture(scope="module")
def dlib_encoder():
    return make_face_encoder("dlib")


@pytest.fixture(scope="module")
def astronaut_refs(dlib_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("refs") / "astronaut.png"
    Image.fromarray(ASTRONAUT).save(path)
    return F.load_references([path], dlib_encoder)


def static_video(image, frames):
    return np.repeat(image[None], frames, axis=0)  # [F, H, W, 3]


# ---- the pure math, against hand-worked examples and float64 numpy ---------------------------

def test_cosine_to_reference_hand_worked_and_no_face_counts_zero():
    emb = np.array([[1, 0], [1, 1], [5, 5]], np.float32)
    found = np.array([True, True, False])
    got = R.cosine_to_reference(emb, found, np.array([2, 0], np.float32))
    np.testing.assert_allclose(got, [1.0, 1 / np.sqrt(2), 0.0], rtol=1e-6)


def test_cosine_to_reference_matches_float64_numpy():
    rng = np.random.default_rng()
    emb, ref = rng.normal(size=(37, 128)).astype(np.float32), rng.normal(size=128).astype(np.float32)
    found = rng.random(37) < 0.7
    e64, r64 = emb.astype(np.float64), ref.astype(np.float64)
    expected = np.array([e @ r64 / np.sqrt((e @ e) * (r64 @ r64)) if f else 0 for e, f in zip(e64, found)])
    np.testing.assert_allclose(R.cosine_to_reference(emb, found, ref), expected, atol=1e-6)


def test_mean_unit_embedding_averages_directions_not_lengths():
    got = F.mean_unit_embedding(np.array([[2.0, 0.0], [0.0, 30.0]]))
    np.testing.assert_allclose(got, [1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)


def test_top_fraction_mean_hand_worked():
    values = np.random.default_rng().permutation(np.arange(1, 101, dtype=np.float32)).reshape(10, 10)
    assert R.top_fraction_mean(values, 0.05) == pytest.approx(98.0)  # mean of 96..100
    assert R.top_fraction_mean(np.arange(10.0), 0.05) == 9.0          # int(0.5) = 0 -> at least one


def test_top_fraction_mean_matches_sorting_in_float64():
    rng = np.random.default_rng()
    values = rng.gamma(2.0, size=(64, 113))
    expected = np.sort(values.ravel())[::-1][: int(values.size * 0.05)].mean()
    assert R.top_fraction_mean(values) == pytest.approx(expected, rel=1e-12)


def test_sample_frame_indices_spread_over_the_video():
    idx = R.sample_frame_indices(81, 16)
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 80 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(R.sample_frame_indices(5, 16), [0, 1, 2, 3, 4])


def test_vbench_decision_hand_worked():
    # 41 frames (81 at 16 fps taken at 8 fps): round(4 * 41 / 16) = 10 pairs must exceed 6 px.
    assert R.is_dynamic_vbench([6.5] * 10 + [0.0] * 30, num_frames=41, fps=16)
    assert not R.is_dynamic_vbench([6.5] * 9 + [0.0] * 31, num_frames=41, fps=16)
    assert not R.is_dynamic_vbench([6.0] * 40, num_frames=41, fps=16)  # strictly greater
    assert not R.is_dynamic_vbench([10.0] * 40, num_frames=41, fps=4)  # below 8 fps: 6 * 8/4 = 12
    assert R.is_dynamic_vbench([12.5] * 40, num_frames=41, fps=4)


# ---- identity reward, dlib backend --------------------------------------------------------------

def test_static_video_of_the_reference_scores_itself(astronaut_refs, dlib_encoder):
    score = R.identity_reward(static_video(ASTRONAUT, 4), astronaut_refs, dlib_encoder)
    assert score.reward >= 0.9 and score.face_hit_rate == 1.0
    assert score.backend.startswith("dlib") and len(score.per_frame) == 4


@pytest.mark.parametrize("change", ["crop", "scale", "brightness", "flip"])
def test_identity_stays_high_under_crop_scale_brightness_flip(astronaut_refs, dlib_encoder, change):
    image = {"crop": ASTRONAUT[30:330, 100:400],
             "scale": cv2.resize(ASTRONAUT, (300, 300), interpolation=cv2.INTER_AREA),
             "brightness": np.clip(ASTRONAUT * 1.3 + 25, 0, 255).astype(np.uint8),
             "flip": ASTRONAUT[:, ::-1]}[change]
    score = R.identity_reward(static_video(np.ascontiguousarray(image), 2), astronaut_refs, dlib_encoder)
    assert score.face_hit_rate == 1.0 and score.reward >= 0.9


def test_a_person_on_half_the_frames_keeps_the_score_of_those_frames(astronaut_refs, dlib_encoder):
    # The person leaves and comes back: frames without her are not "someone else" (issue 19), and the
    # search where the neighbouring frames had her face finds nothing on the bare background.
    background = cv2.resize(skimage.data.coffee(), (640, 400))
    with_face = background.copy()
    with_face[100:300, 220:420] = ASTRONAUT[20:220, 120:320]  # the head, pasted
    video = np.stack([with_face if f % 2 == 0 else background for f in range(8)])  # [8, 400, 640, 3]
    score = R.identity_reward(video, astronaut_refs, dlib_encoder, num_frames=8)
    assert score.face_hit_rate == 0.5 and score.found.tolist() == [True, False] * 4
    assert np.all(score.per_frame[1::2] == 0) and np.all(score.per_frame[0::2] > 0.9)
    assert score.reward == pytest.approx(score.per_frame[0::2].mean(), rel=1e-6)  # p = p_min: no shrink
    glimpse = R.identity_reward(np.concatenate([video[:1], video[1:2].repeat(7, 0)]), astronaut_refs,
                                dlib_encoder, num_frames=8)                       # her face in 1 of 8 frames
    assert glimpse.face_hit_rate == 1 / 8
    assert glimpse.reward == pytest.approx(glimpse.per_frame[0] * (1 / 8) / 0.5, rel=1e-6)


def test_image_without_a_face_has_zero_hit_rate(astronaut_refs, dlib_encoder):
    score = R.identity_reward(static_video(skimage.data.coffee(), 4), astronaut_refs, dlib_encoder)
    assert score.face_hit_rate == 0.0 and score.reward == 0.0


def test_another_real_person_scores_lower_than_the_same_person(astronaut_refs, dlib_encoder):
    hanks = F.load_references([INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"], dlib_encoder)  # a tight 112-px crop
    other = R.identity_reward(static_video(ASTRONAUT, 2), hanks, dlib_encoder).reward
    same = R.identity_reward(static_video(ASTRONAUT, 2), astronaut_refs, dlib_encoder).reward
    assert same >= 0.9 and same - other > 2 * ID_CALIBRATION["dlib"].delta_id  # measured: 0.99 vs 0.87


def test_dlib_separates_same_and_different_people_on_shared_faces(dlib_encoder, faces_data):
    photos = sorted(faces_data.glob("id*_v*_f*.png"))
    assert len(photos) == 16, f"expected the 16 test frames in {faces_data}"
    emb = {}
    for path in photos:
        emb_f, found = dlib_encoder.embed_faces(F.read_photo(path)[None])
        if found[0]:
            emb[path.name] = emb_f[0]
    assert len(emb) >= 14
    same, cross = [], []
    for a, b in itertools.combinations(sorted(emb), 2):
        (same if a[:4] == b[:4] else cross).append(float(emb[a] @ emb[b]))
    same, cross = np.array(same), np.array(cross)
    auc = np.mean(same[:, None] > cross[None, :])
    assert auc >= 0.95 and same.mean() - cross.mean() >= 0.1
    # ID_CALIBRATION["dlib"] is measured on r_id of whole videos: tests/test_id_video.py re-measures it


def test_identity_reward_refuses_references_from_another_backend(astronaut_refs, dlib_encoder):
    other = F.References(astronaut_refs.crops, astronaut_refs.embeddings, astronaut_refs.mean_embedding,
                         "insightface", astronaut_refs.paths)
    with pytest.raises(ValueError, match="not comparable"):
        R.identity_reward(static_video(ASTRONAUT, 2), other, dlib_encoder)


# ---- reference photos: what users hit first -----------------------------------------------------

def test_exif_orientation_is_honoured(tmp_path, astronaut_refs, dlib_encoder):
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(np.rot90(ASTRONAUT).copy()).save(path, exif=exif, quality=95)
    refs = F.load_references([path], dlib_encoder)  # HOG finds only upright faces
    assert float(refs.mean_embedding @ astronaut_refs.mean_embedding) > 0.95


@pytest.mark.parametrize("kind", ["grey", "rgba", "grey16", "palette"])
def test_grey_rgba_16bit_and_palette_photos_are_converted(tmp_path, astronaut_refs, dlib_encoder, kind):
    grey = cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2GRAY)
    image = {"grey": Image.fromarray(grey),
             "rgba": Image.fromarray(np.dstack([ASTRONAUT, np.full(grey.shape, 255, np.uint8)])),
             "grey16": Image.fromarray(grey.astype(np.uint16) * 257),
             "palette": Image.fromarray(ASTRONAUT).convert("P", palette=Image.Palette.ADAPTIVE)}[kind]
    path = tmp_path / f"{kind}.png"
    image.save(path)
    photo = F.read_photo(path)
    assert photo.dtype == np.uint8 and photo.shape == (512, 512, 3)
    if kind == "grey16":  # 16-bit values are rescaled, not clipped to white
        np.testing.assert_array_equal(photo[..., 0], grey)
    refs = F.load_references([path], dlib_encoder)
    assert float(refs.mean_embedding @ astronaut_refs.mean_embedding) > 0.9


def test_several_faces_take_the_largest_with_a_warning_naming_the_file(dlib_encoder):
    group = INSIGHTFACE_IMAGES / "t1.jpg"
    faces = dlib_encoder.find_faces(F.read_photo(group), thorough=True)
    assert len(faces) > 1
    with pytest.warns(UserWarning, match="t1.jpg"):
        refs = F.load_references([group], dlib_encoder)
    largest = max(faces, key=lambda face: face.area)
    np.testing.assert_allclose(refs.embeddings[0], largest.embedding, atol=1e-6)


def test_a_folder_of_photos_gives_one_reference_per_photo(tmp_path, dlib_encoder):
    Image.fromarray(ASTRONAUT).save(tmp_path / "a.png")
    Image.fromarray(ASTRONAUT[:, ::-1]).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one person: no "several faces" warning (her mission patch is no face)
        refs = F.load_references(tmp_path, dlib_encoder)
    assert [Path(p).name for p in refs.paths] == ["a.png", "b.jpg"]
    assert refs.embeddings.shape == (2, 128) and refs.crops.shape == (2, 150, 150, 3)
    assert np.linalg.norm(refs.mean_embedding) == pytest.approx(1.0, abs=1e-6)


def _bad_reference(kind, tmp_path):
    path = tmp_path / {"missing": "nobody.jpg", "text": "notes.jpg", "truncated": "broken.png",
                       "tiny": "tiny.png", "no_face": "coffee.png"}[kind]
    if kind == "text":
        path.write_text("these are not pixels")
    elif kind == "truncated":
        Image.fromarray(ASTRONAUT).save(path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "tiny":
        Image.fromarray(cv2.resize(ASTRONAUT, (40, 40), interpolation=cv2.INTER_AREA)).save(path)
    elif kind == "no_face":
        Image.fromarray(skimage.data.coffee()).save(path)
    return path


@pytest.mark.parametrize("kind, what", [("missing", "not found"), ("text", "cannot read"),
                                        ("truncated", "cannot read"), ("tiny", "too small"),
                                        ("no_face", "no face found")])
def test_bad_reference_photos_raise_one_clear_error(tmp_path, dlib_encoder, kind, what):
    path = _bad_reference(kind, tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(ASTRONAUT).save(good)
    with pytest.raises(F.ReferencePhotoError, match=what) as err:
        F.load_references([good, path], dlib_encoder)  # never silently continue with the good one
    assert str(path) in str(err.value)


def test_no_reference_photos_is_an_error(tmp_path, dlib_encoder):
    with pytest.raises(F.ReferencePhotoError, match="no reference photos"):
        F.load_references([], dlib_encoder)
    with pytest.raises(F.ReferencePhotoError, match=str(tmp_path)):
        F.load_references(tmp_path, dlib_encoder)  # an empty folder


# ---- insightface backend ------------------------------------------------------------------------

def test_insightface_path_runs_a_torch_exported_arcface_onnx(tmp_path, astronaut_refs):
    torch = pytest.importorskip("torch")
    from insightface.utils.face_align import norm_crop

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 512)).eval()
    onnx_path = tmp_path / "tiny_arcface.onnx"  # ArcFaceONNX's signature: [N, 3, 112, 112] -> [N, 512]
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(onnx_path), dynamo=False,
                      input_names=["data"], output_names=["fc1"], dynamic_axes={"data": {0: "N"}, "fc1": {0: "N"}})
    encoder = make_face_encoder("insightface", model_root=onnx_path)  # insightface's model_zoo.get_model
    assert isinstance(encoder, InsightFaceEncoder) and encoder.dim == 512

    bgr = np.ascontiguousarray(ASTRONAUT[..., ::-1])
    _, kps = encoder.detector.detect(bgr)
    (left_eye, right_eye, nose, mouth_left, mouth_right), = kps
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])

    faces = encoder.find_faces(ASTRONAUT)
    crop = norm_crop(bgr, kps[0], image_size=112)[..., ::-1]  # RGB [112, 112, 3]: what ArcFace sees
    blob = torch.from_numpy((crop.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]
    expected = net(blob)[0].detach().numpy()
    np.testing.assert_allclose(faces[0].embedding, expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_array_equal(faces[0].crop, crop)

    refs = F.load_references([astronaut_refs.paths[0]], encoder)
    score = R.identity_reward(static_video(ASTRONAUT, 2), refs, encoder)
    assert refs.backend == "insightface" and score.backend.startswith("insightface")
    assert score.reward == pytest.approx(1.0, abs=1e-5)


def test_missing_insightface_pack_is_downloaded_and_offline_the_message_says_how(tmp_path, monkeypatch):
    # Asked for by name, a missing pack is fetched with insightface's own downloader. Offline here for sure:
    # its release URL is pointed at a closed local port (a connection refused, as with no network).
    import insightface.utils.storage

    asked = []
    monkeypatch.setattr(insightface.utils.storage, "model_zoo_download_url",
                        lambda name: asked.append(name) or f"http://127.0.0.1:9/{name}")
    with pytest.raises(FileNotFoundError) as err:
        make_face_encoder("insightface", model_root=tmp_path)
    message = str(err.value)
    assert asked == ["antelopev2.zip"]                      # the downloader ran, for the pack the message names
    assert "\n" not in message and "download failed" in message
    assert str(tmp_path / "antelopev2") in message and "ensure_available" in message and "backend='dlib'" in message


def test_auto_falls_back_to_dlib_without_a_pack_and_says_so(tmp_path, capsys):
    encoder = make_face_encoder("auto", model_root=tmp_path)
    assert isinstance(encoder, DlibFaceEncoder)
    assert "ID encoder: dlib" in capsys.readouterr().err


# ---- dynamic reward -----------------------------------------------------------------------------

def panned_video(height, width, shift, frames=6):
    """A natural image seen through a window moving `shift` px per frame to the right."""
    scene = cv2.resize(skimage.data.astronaut(), (width * 2, width * 2), interpolation=cv2.INTER_CUBIC)
    return np.stack([scene[height // 4: height // 4 + height, f * shift: f * shift + width] for f in range(frames)])


def test_static_video_has_no_motion():
    score = R.dynamic_reward(static_video(ASTRONAUT, 5))
    assert score.reward == pytest.approx(0.0, abs=1e-3) and not score.is_dynamic


def test_dynamic_reward_grows_with_the_shift_in_pixels():
    # at 240 x 416 the flow runs at 256 / 240 of the size, so a shift s moves 1.07 s px there
    rewards = [R.dynamic_reward(panned_video(240, 416, s)).reward for s in (1, 2, 4, 8)]
    assert np.all(np.diff(rewards) > 0)
    for s, r in zip((1, 2, 4, 8), rewards):
        assert 0.9 <= r / (s * 256 / 240) <= 1.35  # top 5 % overshoot a uniform shift a little


@pytest.mark.parametrize("shift", [2, 4])
def test_dynamic_reward_is_resolution_invariant(shift):
    small = R.dynamic_reward(panned_video(240, 416, shift)).reward
    large = R.dynamic_reward(panned_video(480, 832, 2 * shift)).reward  # same motion, 2x size
    assert large == pytest.approx(small, rel=0.10)


def test_vbench_decision_on_real_flow():
    assert R.dynamic_reward(panned_video(240, 416, 12, frames=9), fps=16).is_dynamic  # 25 px per 8-fps pair
    assert not R.dynamic_reward(panned_video(240, 416, 1, frames=9), fps=16).is_dynamic
    # 4.3 px per 16-fps frame stays under 6, but VBench looks at 8-fps pairs: 8.5 px, dynamic
    score = R.dynamic_reward(panned_video(240, 416, 4, frames=9), fps=16)
    assert score.per_pair.max() < 6 and score.is_dynamic


# ---- prompt reward and batches ------------------------------------------------------------------

def test_prompt_reward_is_off_without_clip():
    score = R.prompt_reward(static_video(ASTRONAUT, 2), "an astronaut", None)
    assert score.reward is None and not score.enabled and "CLIP" in score.reason


def test_score_videos_gives_the_single_video_numbers(astronaut_refs, dlib_encoder):
    videos = np.stack([static_video(ASTRONAUT, 4), panned_video(512, 512, 5, frames=4)])  # [2, 4, 512, 512, 3]
    rows = R.score_videos(videos, None, astronaut_refs, dlib_encoder, num_frames=4, progress=False)
    for video, row in zip(videos, rows):
        assert row["r_id"] == pytest.approx(R.identity_reward(video, astronaut_refs, dlib_encoder, 4).reward)
        assert row["r_dyn"] == pytest.approx(R.dynamic_reward(video).reward)
        assert row["r_sem"] is None and row["id_backend"].startswith("dlib")
    assert rows[0]["r_dyn"] < 0.01 and rows[1]["r_dyn"] > 2  # 5 px at 512 = 2.5 px at 256
