"""evaluate.py on the tiny preset with real LoRAs: the table is the rewards, the intervals are bootstrap
intervals that narrow with more videos, and bad inputs stop with one clear line.

The photo is examples/astronaut.jpg (Eileen Collins, NASA, public domain). The tiny preset draws no faces,
so the end-to-end r_id is 0 there; the ID curve is checked on a real face in
test_id_curve_follows_a_face_that_fades.
"""

import csv
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate as E  # noqa: E402
from model import VideoModel  # noqa: E402
from faces import load_references, make_face_encoder  # noqa: E402
from judges import load_clip, load_judge  # noqa: E402
from rewards import dynamic_reward, identity_reward, prompt_reward  # noqa: E402

PHOTO = REPO / "examples" / "astronaut.jpg"
SIZE = dict(frames=5, height=64, width=64, steps=2)
QUICK = ["--model", "tiny", "--id-backend", "dlib", "--frames", "5", "--height", "64", "--width", "64", "--steps", "2"]
VARIANTS = ("base", "identity stage", "MagicID")


# ---- fixtures: two real LoRAs, one evaluation with 2 seeds and one with 6 -------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's tensors are too small to gain from threads, and on a shared CPU extra threads
    oversubscribe it (measured: 0.2 s a video on one thread, up to 4.5 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """identity_lora/ and magicid_lora/ saved by save_lora, each with its own random non-zero weights."""
    folder = tmp_path_factory.mktemp("run")
    model = VideoModel.from_pretrained("tiny")
    for name, seed in (("identity", 1), ("magicid", 2)):
        model.add_lora(4, name=name)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.lora_parameters(name):  # peft starts B at 0: the LoRA would change nothing
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        model.save_lora(str(folder / f"{name}_lora"), name=name)
    prompts = folder / "prompts.txt"
    prompts.write_text("# held out\n{person} surfing a big wave\n{person} dancing at a party\n")
    return {"baseline": folder / "identity_lora", "magicid": folder / "magicid_lora", "prompts": prompts}


def run_eval(loras, out, seeds, *extra):
    return E.main(["--ref", str(PHOTO), "--lora-baseline", str(loras["baseline"]), "--lora-magicid",
                   str(loras["magicid"]), "--prompts", str(loras["prompts"]), "--seeds", str(seeds),
                   "--out", str(out), *QUICK, *extra])


@pytest.fixture(scope="module")
def two_seeds(loras, tmp_path_factory):
    return run_eval(loras, tmp_path_factory.mktemp("eval2"), 2)


@pytest.fixture(scope="module")
def six_seeds(loras, two_seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval6")
    shutil.copytree(two_seeds / "videos", out / "videos")  # the first 2 seeds come from the cache
    return run_eval(loras, out, 6)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def ci_width(out, variant, metric):
    row = next(r for r in read_csv(out / "table.csv") if r["model"] == variant)
    return float(row[f"{metric}_ci_high"]) - float(row[f"{metric}_ci_low"])


# ---- end to end ------------------------------------------------------------------------------------------

def test_every_output_is_written_and_names_the_backend(two_seeds):
    for name in ("table.md", "table.csv", "rows.csv", "id_curve.csv", "id_curve.png", "rewards.png"):
        assert (two_seeds / name).stat().st_size > 0, name
    for name in ("id_curve.png", "rewards.png"):
        assert (two_seeds / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (two_seeds / "table.md").read_text()
    assert table.startswith("ID encoder: dlib")
    assert all(f"| {name} | 4 |" in table for name in VARIANTS)  # 2 prompts × 2 seeds
    assert "not available" in table and "--clip" in table  # the CLIP columns, and why
    assert "Prompt judge (r_sem): off" in table and "| off ² |" in table      # the prompt reward, and why
    assert "FVD ↓ |" in table and "FVD not computed (no offline I3D weights)" in table
    for column in ("Face Sim. ↑", "Dyna. Deg. ↑ (r_dyn, px)", "VBench dynamic ↑", "T. Cons. ↑", "CLIP-T ↑",
                   "CLIP-I ↑"):
        assert f"| {column} |" in table                                       # the paper's Table 1, named as there
    assert len(read_csv(two_seeds / "rows.csv")) == 3 * 4


def test_rows_are_the_rewards_of_the_regenerated_videos(two_seeds, loras):
    rows = read_csv(two_seeds / "rows.csv")
    model = VideoModel.from_pretrained("tiny")
    model.load_lora(str(loras["baseline"]), name="baseline")
    model.load_lora(str(loras["magicid"]), name="magicid")
    encoder = make_face_encoder("dlib")
    refs = load_references([PHOTO], encoder)
    adapters = {"base": None, "identity stage": "baseline", "MagicID": "magicid"}
    r_dyn = {}
    for variant, adapter in adapters.items():
        row = next(r for r in rows if r["variant"] == variant and r["prompt"] == "a sks person dancing at a party"
                   and r["seed"] == "10101")
        with model.adapter(adapter):
            video = model.sample([row["prompt"]], seed=int(row["seed"]), **SIZE)[0][0]  # [F, H, W, 3]
        ident, dyn = identity_reward(video, refs, encoder), dynamic_reward(video, model.defaults.fps)
        assert float(row["r_id"]) == pytest.approx(ident.reward, abs=1e-6)
        assert float(row["face_hit_rate"]) == pytest.approx(ident.face_hit_rate, abs=1e-9)
        assert float(row["r_dyn"]) == pytest.approx(dyn.reward, rel=1e-5)
        assert float(row["dynamic_degree"]) == float(dyn.is_dynamic)
        assert row["temporal_consistency"].startswith("not available")
        r_dyn[variant] = dyn.reward
    assert len(set(r_dyn.values())) == 3  # each LoRA changed the video: the adapters were really switched


def test_summary_is_the_bootstrap_of_the_rows(two_seeds):
    rows, table = read_csv(two_seeds / "rows.csv"), read_csv(two_seeds / "table.csv")
    assert [t["model"] for t in table] == list(VARIANTS)
    for summary in table:
        mine = [r for r in rows if r["variant"] == summary["model"]]
        for metric in ("r_id", "face_hit_rate", "r_dyn", "dynamic_degree"):
            values = [float(r[metric]) for r in mine]
            assert float(summary[f"{metric}_mean"]) == pytest.approx(np.mean(values), abs=1e-12)
            expected = E.bootstrap_ci(values)
            got = [float(summary[f"{metric}_{k}"]) for k in ("mean", "ci_low", "ci_high")]
            assert got == pytest.approx(expected, abs=1e-12)
            assert got[1] <= got[0] <= got[2]


def test_more_seeds_narrow_the_interval_and_keep_the_first_videos(two_seeds, six_seeds):
    # The interval of a mean is ≈ 3.92·sd/√n wide: per unit of the videos' spread it narrows with n
    # (the raw width need not: six seeds may meet an outlier two did not).
    def relative_width(out, variant):
        values = [float(r["r_dyn"]) for r in read_csv(out / "rows.csv") if r["variant"] == variant]
        return ci_width(out, variant, "r_dyn") / np.std(values)

    for variant in VARIANTS:
        assert relative_width(six_seeds, variant) < relative_width(two_seeds, variant), variant
    first = {(r["variant"], r["seed"]): r["r_dyn"] for r in read_csv(two_seeds / "rows.csv")}
    more = {(r["variant"], r["seed"]): r["r_dyn"] for r in read_csv(six_seeds / "rows.csv")}
    assert len(more) == 3 * 12 and all(more[key] == value for key, value in first.items())


def test_a_changed_lora_is_not_served_from_the_cache(loras, two_seeds, tmp_path):
    other = tmp_path / "other_lora"
    model = VideoModel.from_pretrained("tiny")
    model.load_lora(str(loras["magicid"]), name="magicid")
    with torch.no_grad():
        for p in model.lora_parameters("magicid"):
            p.mul_(2.0)  # B·A becomes 4·B·A (negating both A and B would leave it unchanged)
    model.save_lora(str(other), name="magicid")
    shutil.copytree(two_seeds / "videos", tmp_path / "out" / "videos")
    out = E.main(["--ref", str(PHOTO), "--lora-baseline", str(loras["baseline"]), "--lora-magicid", str(other),
                  "--prompts", str(loras["prompts"]), "--seeds", "1", "--out", str(tmp_path / "out"), *QUICK])
    before = {(r["variant"], r["seed"]): r["r_dyn"] for r in read_csv(two_seeds / "rows.csv")}
    after = {(r["variant"], r["seed"]): r["r_dyn"] for r in read_csv(out / "rows.csv")}
    assert all(after[key] == before[key] for key in after if key[0] != "MagicID")  # unchanged: cached
    assert all(after[key] != before[key] for key in after if key[0] == "MagicID")  # new weights: regenerated


# ---- the bootstrap interval against independent computations ---------------------------------------------

def test_bootstrap_ci_matches_the_exact_bootstrap_distribution_for_small_n():
    values = np.random.default_rng().normal(size=5)
    # All 5^5 equally likely resamples, in float64: the exact bootstrap distribution of the mean.
    exact = np.sort([values[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    mean, low, high = E.bootstrap_ci(values, resamples=200_000, seed=np.random.default_rng().integers(1 << 30))
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    tolerance = 0.002  # Monte-Carlo error of a 2.5 % quantile from 200k resamples: sd ≈ 0.00035
    for bound, p in ((low, 0.025), (high, 0.975)):
        below, at_or_below = np.mean(exact < bound - 1e-12), np.mean(exact <= bound + 1e-12)
        assert below <= p + tolerance and at_or_below >= p - tolerance, (bound, p, below, at_or_below)


def test_bootstrap_ci_matches_the_normal_interval_for_large_n():
    values = np.random.default_rng().normal(3.0, 2.0, size=400)
    mean, low, high = E.bootstrap_ci(values, resamples=10_000, seed=np.random.default_rng().integers(1 << 30))
    half = 1.959964 * values.std() / np.sqrt(len(values))  # the bootstrap's plug-in sd: ddof=0
    assert low == pytest.approx(values.mean() - half, abs=0.08 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.08 * half)


def test_the_interval_narrows_as_one_over_root_n():
    values = np.random.default_rng().exponential(size=50)
    _, low, high = E.bootstrap_ci(values)
    _, low4, high4 = E.bootstrap_ci(np.tile(values, 4))  # same distribution, 4× the samples
    assert (high4 - low4) / (high - low) == pytest.approx(0.5, abs=0.1)
    few, many = np.random.default_rng().normal(size=(2, 1000))
    assert np.ptp(E.bootstrap_ci(many)[1:]) < np.ptp(E.bootstrap_ci(few[:10])[1:])


def test_one_value_has_a_zero_width_interval_and_none_is_nan():
    assert E.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(np.isnan(E.bootstrap_ci([])))


# ---- the ID curve and the CLIP metrics on real images ----------------------------------------------------

def test_id_curve_follows_a_face_that_fades():
    encoder = make_face_encoder("dlib")
    refs = load_references([PHOTO], encoder)
    face = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    grey = np.full_like(face, 128)
    video = np.stack([cv2.addWeighted(face, 1 - a, grey, a, 0) for a in (0, 0, 0.3, 0.97, 1)])  # [5, H, W, 3]
    row = {"variant": "fading", **E.score_video(video, "", refs, encoder, fps=8.0)}
    assert row["id_per_frame"] == pytest.approx(identity_reward(video, refs, encoder).per_frame.tolist(), abs=1e-6)
    curve = E.summarize([row], ["fading"])["fading"]["id_curve"]
    assert curve["position"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the photo itself; then no face at all: the curve is identity where a face is, not presence (NaN)
    assert curve["mean"][0] > 0.9 and np.isnan(curve["mean"][-1]) and row["id_found"][-1] is False
    np.testing.assert_array_equal(curve["low"], curve["mean"])   # one video: nothing to resample
    np.testing.assert_array_equal(curve["high"], curve["mean"])
    # A second video without any face does not halve the curve: it is identity where a face is.
    faceless = {**row, "id_per_frame": [0.0] * 5, "id_found": [False] * 5}
    both = E.summarize([row, faceless], ["fading"])["fading"]["id_curve"]
    assert both["mean"][0] == pytest.approx(row["id_per_frame"][0])


def test_temporal_consistency_is_the_mean_cosine_of_consecutive_clip_embeddings(tiny_clip):
    clip = load_clip(tiny_clip)
    video = np.stack([cv2.resize(image, (96, 96)) for image in (skimage.data.astronaut(), skimage.data.coffee(),
                                                                 skimage.data.chelsea())])  # [3, 96, 96, 3]
    with torch.no_grad():  # transformers 5: get_image_features returns an output object, the embedding is pooled
        emb = clip.model.get_image_features(**clip.processor(images=list(video), return_tensors="pt")).pooler_output
    emb = emb.double().numpy()
    cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(emb[:-1], emb[1:])]
    assert E.temporal_consistency(video, clip) == pytest.approx(np.mean(cos), abs=1e-6)
    assert E.temporal_consistency(video[[0, 0, 0]], clip) == pytest.approx(1.0, abs=1e-6)
    assert E.temporal_consistency(video, None) is None


def test_clip_i_is_the_mean_cosine_of_every_frame_to_every_reference_photo(tiny_clip):
    clip = load_clip(tiny_clip)
    video = np.stack([cv2.resize(image, (96, 96)) for image in (skimage.data.coffee(), skimage.data.chelsea())])
    photo = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        emb = clip.model.get_image_features(**clip.processor(images=[*video, photo], return_tensors="pt"))
    emb = emb.pooler_output.double().numpy()                                   # [3, D]: two frames, the photo
    cos = [a @ emb[2] / np.linalg.norm(a) / np.linalg.norm(emb[2]) for a in emb[:2]]
    refs = E.reference_clip_embeddings([str(PHOTO)], clip)
    assert E.clip_image_similarity(video, refs, clip) == pytest.approx(np.mean(cos), abs=1e-6)
    two_photos = E.reference_clip_embeddings([str(PHOTO), str(PHOTO)], clip)  # the mean over photos too
    assert E.clip_image_similarity(video, two_photos, clip) == pytest.approx(np.mean(cos), abs=1e-6)
    assert E.clip_image_similarity(video, None, None) is None


def test_with_a_local_clip_the_clip_columns_are_numbers(loras, tiny_clip, tmp_path):
    out = E.main(["--ref", str(PHOTO), "--lora-baseline", str(loras["baseline"]), "--lora-magicid",
                  str(loras["magicid"]), "--prompts", str(loras["prompts"]), "--seeds", "1", "--clip",
                  str(tiny_clip), "--out", str(tmp_path), *QUICK])
    table = (out / "table.md").read_text()
    assert "not available" not in table and f"CLIP: CLIP {tiny_clip.name}." in table
    for row in read_csv(out / "rows.csv"):
        for metric in ("temporal_consistency", "clip_t", "clip_i"):
            assert -1 <= float(row[metric]) <= 1, metric
        assert row["r_sem"].startswith("off")                                 # --clip is a metric, not a judge


def test_a_vlm_judge_gives_r_sem_and_is_named_in_the_table(loras, tiny_vlm, tiny_clip, tmp_path):
    out = run_eval(loras, tmp_path, 1, "--judge", f"vlm:{tiny_vlm}", "--clip", str(tiny_clip))
    table, rows = (out / "table.md").read_text(), read_csv(out / "rows.csv")
    judge = load_judge(f"vlm:{tiny_vlm}")
    assert f"Prompt judge (r_sem): {judge.name}." in table and "off ²" not in table
    model = VideoModel.from_pretrained("tiny")
    row = next(r for r in rows if r["variant"] == "base")
    video = model.sample([row["prompt"]], seed=int(row["seed"]), **SIZE)[0][0]  # [F, H, W, 3]
    assert float(row["r_sem"]) == pytest.approx(prompt_reward(video, row["prompt"], judge).reward, abs=1e-6)
    assert all(0 <= float(r["r_sem"]) <= 1 and r["r_sem_judge"] == judge.name for r in rows)


def test_a_clip_judge_also_serves_the_clip_columns(loras, tiny_clip, tmp_path):
    out = run_eval(loras, tmp_path, 1, "--judge", f"clip:{tiny_clip}")
    assert "not available" not in (out / "table.md").read_text()
    for row in read_csv(out / "rows.csv"):   # the same CLIP on the same 8 frames: r_sem is CLIP-T
        assert row["r_sem"] == row["clip_t"] and row["r_sem_judge"] == row["clip_model"] == f"CLIP {tiny_clip.name}"


# ---- bad inputs: one clear line ---------------------------------------------------------------------------

def test_missing_inputs_stop_with_one_clear_error_line(loras, tmp_path):
    no_face = tmp_path / "coffee.png"
    cv2.imwrite(str(no_face), skimage.data.coffee())
    good = {"--ref": str(PHOTO), "--lora-baseline": str(loras["baseline"]), "--lora-magicid": str(loras["magicid"]),
            "--prompts": str(loras["prompts"])}
    cases = {  # what is wrong -> words the message must contain
        "--lora-magicid": (str(tmp_path / "absent_lora"), ["--lora-magicid", "does not exist"]),
        "--prompts": (str(tmp_path / "absent.txt"), ["prompts file", "does not exist"]),
        "--ref": (str(no_face), ["no face found", "coffee.png"]),
    }
    processes = {}
    for flag, (value, _) in cases.items():  # started together: each pays Python's import time once, in parallel
        args = [item for key, good_value in good.items() for item in (key, value if key == flag else good_value)]
        processes[flag] = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), *args, *QUICK, "--out",
                                            str(tmp_path / "out")], cwd=tmp_path, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    for flag, process in processes.items():
        _, err = process.communicate(timeout=120)
        last = err.strip().splitlines()[-1]
        assert process.returncode != 0, flag
        assert last.startswith("error: ") and all(word in last for word in cases[flag][1]), (flag, last)
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_videos_are_scored_on_a_worker_beside_sampling_and_a_scoring_error_surfaces(tmp_path, monkeypatch):
    # evaluate.evaluate hands each video to a scoring thread and samples the next meanwhile: every row must still
    # be its own video's scores (checked against sampling and scoring inline), and an error there must stop it.
    import threading

    model = VideoModel.from_pretrained("tiny")
    encoder = make_face_encoder("dlib")
    refs = load_references([PHOTO], encoder)
    threads, real_score_video = [], E.score_video

    def score_video(*args, **kwargs):  # the real scores, noting where they ran
        threads.append(threading.current_thread().name)
        return real_score_video(*args, **kwargs)

    monkeypatch.setattr(E, "score_video", score_video)
    prompts = ["a sks person surfing", "a sks person dancing"]
    result = E.evaluate(model, {"base": None}, prompts, 2, refs, encoder, SIZE, tmp_path / "eval", seed=7)
    assert len(threads) == 4 and all(name.startswith("scoring") for name in threads)
    for row in result["rows"]:
        videos, _ = model.sample([row["prompt"]], seed=[row["seed"]], **SIZE)
        assert row["r_dyn"] == pytest.approx(dynamic_reward(videos[0], model.defaults.fps).reward, abs=1e-9)
    assert len({row["seed"] for row in result["rows"]}) == 4

    def broken(*args, **kwargs):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(E, "score_video", broken)
    with pytest.raises(RuntimeError, match="scoring broke"):
        E.evaluate(model, {"base": None}, prompts, 1, refs, encoder, SIZE, tmp_path / "again", seed=7)
