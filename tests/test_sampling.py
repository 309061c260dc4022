"""sampling.py against the spec: static videos, the crash-safe repository, the Pareto frontier and
the two pair-selection rules (METHOD.md steps 1, 2 and 4)."""
import json
import os

import numpy as np
import pytest
import torch

from repository import Repository
from sampling import (crop_around_face, pareto_frontier, select_dynamic_pairs,
                      select_identity_pairs, static_video, summary)

FRESH_SEEDS = list(range(40)) + [int.from_bytes(os.urandom(4), "little")]   # fixed ones plus one new each run


# ----------------------------------------------------------------------------- static videos

def row_col_image(h, w):
    """Red = row, green = column: any crop of it can be located from its pixels."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(h)[:, None]
    image[..., 1] = np.arange(w)[None, :]
    return image


def test_static_video_repeats_one_frame_so_motion_is_zero():
    video = static_video(row_col_image(120, 100), frames=9, height=32, width=48, jitter=0.2,
                         rng=np.random.default_rng(0))
    assert video.shape == (9, 32, 48, 3) and video.dtype == np.uint8
    assert (video == video[0]).all()


def test_portrait_photo_becomes_landscape_video_by_center_crop_not_stretch():
    # A 200×100 portrait photo into a 32×64 (aspect 1:2) video: the cover crop keeps all 100
    # columns and the middle 50 rows (75..125), so red spans ~75..125 and green ~0..99.
    frame = static_video(row_col_image(200, 100), frames=1, height=32, width=64, jitter=0)[0]
    red, green = frame[..., 0].astype(int), frame[..., 1].astype(int)
    assert 73 <= red.min() <= 78 and 122 <= red.max() <= 127
    assert green.min() <= 2 and green.max() >= 97
    # no stretch: 50 rows into 32 and 100 columns into 64 are the same factor (0.64)
    assert abs((red.max() - red.min()) / 32 - (green.max() - green.min()) / 64) < 0.1


def test_jitter_is_one_reproducible_draw_per_video():
    image = row_col_image(120, 160)
    a = static_video(image, 5, 32, 32, jitter=0.2, rng=np.random.default_rng(7))
    b = static_video(image, 5, 32, 32, jitter=0.2, rng=np.random.default_rng(7))
    assert (a == b).all()
    rng = np.random.default_rng(8)
    videos = [static_video(image, 5, 32, 32, jitter=0.2, rng=rng) for _ in range(6)]
    assert len({v.tobytes() for v in videos}) == 6           # every video its own crop
    mirrored = [v[0, 0, 0, 1] > v[0, 0, -1, 1] for v in videos]  # green falls left to right
    assert any(mirrored) and not all(mirrored)


def test_static_video_rejects_bad_input_with_a_clear_message():
    with pytest.raises(ValueError, match="rng"):
        static_video(row_col_image(10, 10), 3, 16, 16, jitter=0.1)
    with pytest.raises(ValueError, match="uint8"):
        static_video(np.zeros((10, 10), np.float32), 3, 16, 16, jitter=0)


# ----------------------------------------------------------------------------- repository

REWARDS = {"r_id": 0.91, "r_dyn": 3.5, "r_sem": None, "face_hit_rate": 1.0, "backend": "dlib"}


def test_repository_round_trip(tmp_path):
    repo = Repository(tmp_path)
    z = torch.randn(16, 3, 4, 4, dtype=torch.bfloat16)
    video = np.random.default_rng(0).integers(0, 255, (9, 8, 8, 3), dtype=np.uint8)
    vid = repo.add(z, "a man surfing", "finetuned", {**REWARDS, "r_id": np.float32(0.5)}, seed=3, video=video)
    assert repo.has("a man surfing", "finetuned", 3) and not repo.has("a man surfing", "initial", 3)
    assert torch.equal(repo.latents(vid), z)                  # bf16 kept exactly
    assert (repo.preview(vid) == video[[0, 3, 5, 8]]).all()   # 4 evenly spaced frames
    [entry] = Repository(tmp_path).entries()                  # a fresh process sees the same
    assert entry == {"id": vid, "prompt": "a man surfing", "source": "finetuned", "seed": 3,
                     "rewards": {**REWARDS, "r_id": 0.5}}
    table = repo.table()
    assert table["id"] == [vid] and table["r_id"][0] == 0.5 and np.isnan(table["r_sem"][0])


def test_repository_rebuilds_a_missing_corrupt_or_stale_index(tmp_path):
    repo = Repository(tmp_path)
    a = repo.add(torch.zeros(4, 1, 2, 2), "p", "initial", REWARDS, seed=0)
    index = tmp_path / "index.json"
    index.unlink()
    assert [e["id"] for e in Repository(tmp_path).entries()] == [a]
    index.write_text('{"half a json')
    assert [e["id"] for e in Repository(tmp_path).entries()] == [a]
    # a crash between writing a video and writing the index: the index lacks the new video
    old_index = index.read_text()
    b = repo.add(torch.ones(4, 1, 2, 2), "p", "initial", REWARDS, seed=1)
    index.write_text(old_index)
    assert [e["id"] for e in Repository(tmp_path).entries()] == sorted([a, b])
    # ... or holds another version of a replaced video
    old_index = index.read_text()
    repo.add(torch.ones(4, 1, 2, 2), "p", "initial", {**REWARDS, "r_id": 0.1}, seed=1)
    index.write_text(old_index)
    assert Repository(tmp_path).table()["r_id"].tolist() == [0.91, 0.1]


def test_a_crash_mid_write_leaves_the_old_video_intact(tmp_path, monkeypatch):
    repo = Repository(tmp_path)
    vid = repo.add(torch.zeros(4, 1, 2, 2), "p", "static", REWARDS, seed=0)

    def crash(*args):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        repo.add(torch.ones(4, 1, 2, 2), "p", "static", {**REWARDS, "r_id": 0.0}, seed=0)
    monkeypatch.undo()
    assert not list((tmp_path / "videos").glob(".*"))       # an exception removes its temporary file
    leftover = tmp_path / "videos" / f".{vid}.999.tmp.safetensors"
    leftover.write_bytes(b"half a file")                      # what a power cut would leave
    reopened = Repository(tmp_path)
    assert not leftover.exists()                              # cleaned up on open, never read as a video
    assert torch.equal(reopened.latents(vid), torch.zeros(4, 1, 2, 2))
    assert reopened.entries()[0]["rewards"]["r_id"] == 0.91


def test_repository_reads_no_pickle_and_checks_its_inputs(tmp_path):
    repo = Repository(tmp_path)
    repo.add(torch.zeros(4, 1, 2, 2), "p", "initial", REWARDS, seed=0)
    assert {p.suffix for p in tmp_path.rglob("*") if p.is_file()} == {".safetensors", ".json"}
    with pytest.raises(ValueError, match="source"):
        repo.add(torch.zeros(4, 1, 2, 2), "p", "baseline", REWARDS, seed=0)
    with pytest.raises(ValueError, match="r_dyn"):
        repo.add(torch.zeros(4, 1, 2, 2), "p", "initial", {"r_id": 0.5}, seed=0)
    with pytest.raises(ValueError, match=r"\[C, f, h, w\]"):
        repo.add(torch.zeros(1, 4, 1, 2, 2), "p", "initial", REWARDS, seed=0)


# ----------------------------------------------------------------------------- Pareto frontier

def brute_force_frontier(points):
    """O(N²): p is on the frontier unless some q is ≥ everywhere and > somewhere."""
    return np.array([not any((q >= p).all() and (q > p).any() for q in points) for p in points], bool)


def test_frontier_worked_example_keeps_duplicates():
    # (1,1) is dominated by (2,2); the two (2,2) tie and both stay; (1,3) and (3,1) are extremes.
    points = [[1, 3], [2, 2], [3, 1], [1, 1], [2, 2], [3, 0]]
    assert pareto_frontier(points).tolist() == [True, True, True, False, True, False]


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_frontier_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    for k in (1, 2, 3):
        n = rng.integers(1, 60)
        points = rng.integers(0, 6, (n, k)).astype(float)    # few values: many ties and duplicates
        assert (pareto_frontier(points) == brute_force_frontier(points)).all()
        points = rng.normal(size=(n, k))
        assert (pareto_frontier(points) == brute_force_frontier(points)).all()


def test_frontier_2d_is_fast():
    points = np.random.default_rng(0).normal(size=(200_000, 2))
    front = pareto_frontier(points)                          # O(N²) would not finish
    assert 1 <= front.sum() < 100


def test_frontier_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        pareto_frontier([[0.5, np.nan]])


# ----------------------------------------------------------------------------- identity pairs

# Five videos: A, B share prompt 0; C, D share prompt 1; E is a static video (its caption 9).
R_ID = [0.9, 0.5, 0.8, 0.4, 1.0]
R_DYN = [5.0, 8.0, 4.0, 3.0, 0.0]
PROMPT = [0, 0, 1, 1, 9]
SOURCE = ["initial", "finetuned", "initial", "finetuned", "static"]


def test_identity_pairs_worked_example():
    # With τ_dyn = 3: A>B (gap 0.4, motion 3), C>D (0.4, 1), E>D (0.6, 3: the static photo beats
    # a still generated video, trained on D's prompt). E vs A/B/C moves too differently (5, 8, 4).
    sel = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, delta_id=0.1, tau_dyn=3.0)
    assert sorted(zip(sel.pairs, sel.prompts)) == [((0, 1), 0), ((2, 3), 1), ((4, 3), 1)]
    assert sel.rejected["different prompts"] == 4 and sel.rejected["dyn gap > τ_dyn"] == 3
    # With δ_id = 0.5 only E>D (0.6) is left: A>B, C>D (0.4), E>A (0.1), E>C (0.2) fall short.
    sel = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, delta_id=0.5, tau_dyn=3.0)
    assert sel.pairs == [(4, 3)] and sel.rejected["id gap < δ_id"] == 4


def test_identity_gap_exactly_delta_counts_despite_float_rounding():
    sel = select_identity_pairs([0.9, 0.8], [1.0, 1.0], [0, 0], ["initial"] * 2, delta_id=0.1)
    assert sel.pairs == [(0, 1)]                             # 0.9 − 0.8 = 0.09999999999999998


def random_repository(rng, n_prompts=4, k=6, n_static=3, ties=False):
    n = n_prompts * k + n_static
    r_id = rng.uniform(0.3, 1.0, n)
    r_dyn = rng.uniform(0.0, 10.0, n)
    if ties:
        r_id, r_dyn = np.round(r_id, 1), np.round(r_dyn)
    prompt = np.r_[np.repeat([f"prompt {p}" for p in range(n_prompts)], k), ["a photo of sks"] * n_static]
    source = np.r_[rng.choice(["initial", "finetuned"], n_prompts * k), ["static"] * n_static]
    r_dyn[source == "static"] = 0.0
    return r_id, r_dyn, prompt, source


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_identity_pairs_never_violate_delta_id_or_tau_dyn(seed):
    rng = np.random.default_rng(seed)
    r_id, r_dyn, prompt, source = random_repository(rng, ties=seed % 2 == 0)
    delta_id, tau_dyn = rng.uniform(0.05, 0.3), rng.uniform(0.5, 4.0)
    sel = select_identity_pairs(r_id, r_dyn, prompt, source, delta_id=delta_id, tau_dyn=tau_dyn)
    assert sel.pairs, "the random repository should give some pairs"
    for (w, l), p in zip(sel.pairs, sel.prompts):
        assert r_id[w] - r_id[l] >= delta_id - 1e-9 and r_id[w] > r_id[l]
        assert abs(r_dyn[w] - r_dyn[l]) <= tau_dyn + 1e-9
        static_w, static_l = source[w] == "static", source[l] == "static"
        assert prompt[w] == prompt[l] or static_w or static_l     # across prompts only with a static video
        assert p == (prompt[w] if static_l else prompt[l])        # the non-static member's prompt
    # every candidate pair is either kept or charged to exactly one reason
    assert sel.candidates == len(r_id) * (len(r_id) - 1) // 2 == len(sel.pairs) + sum(sel.rejected.values())
    # and nothing that passes was dropped: the brute-force count of valid pairs agrees
    valid = sum(1 for i in range(len(r_id)) for j in range(len(r_id))
                if r_id[i] - r_id[j] >= delta_id - 1e-9 and r_id[i] > r_id[j]
                and abs(r_dyn[i] - r_dyn[j]) <= tau_dyn + 1e-9
                and (prompt[i] == prompt[j] or "static" in (source[i], source[j])))
    assert len(sel.pairs) == valid


def test_identity_limits_keep_the_largest_id_gaps():
    sel = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, tau_dyn=3.0, max_pairs=2)
    assert sel.pairs == [(4, 3), (0, 1)] and sel.rejected["top-N cut"] == 1
    sel = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, tau_dyn=3.0, max_uses=1)
    assert sel.pairs == [(4, 3), (0, 1)] and sel.rejected["use limit"] == 1   # D already used by E


# ----------------------------------------------------------------------------- dynamic pairs

def test_dynamic_pairs_worked_example():
    # Prompt 0: A (0.9, 5), B (0.5, 8), C (0.8, 4), D (0.4, 3); E is static and never a candidate.
    # Frontier {A, B}. A beats C (id +0.1 ≥ δ/2, dyn 5 ≥ 4) and D; B beats D (id +0.1, dyn 8 ≥ 3);
    # B vs C is a trade-off (B moves more, C looks more like the person): no pair.
    # Scores with spreads 0.5 (r_id) and 5 (r_dyn): A>D 0.5/0.5 + 2/5 = 1.4, B>D 0.2 + 1 = 1.2,
    # A>C 0.2 + 0.2 = 0.4.
    prompt = [0, 0, 0, 0, 0]
    sel = select_dynamic_pairs(R_ID, R_DYN, prompt, SOURCE, delta_id=0.1)
    assert sel.pairs == [(0, 3), (1, 3), (0, 2)]
    assert np.allclose(sel.scores, [1.4, 1.2, 0.4])
    assert sel.rejected["loser not dominated"] == 3          # B>C, A>B, B>A
    # each video in at most m pairs: with m = 1, D is taken by A and B must go without
    sel = select_dynamic_pairs(R_ID, R_DYN, prompt, SOURCE, delta_id=0.1, max_uses=1)
    assert sel.pairs == [(0, 3)] and sel.rejected["use limit"] == 2


def test_dynamic_margin_needs_a_clear_gap():
    # W dominates L only slightly: +0.04 in r_id (< δ/2 = 0.05) and +10 % in r_dyn (< 20 %)
    sel = select_dynamic_pairs([0.84, 0.80], [5.5, 5.0], [0, 0], ["initial"] * 2, delta_id=0.1)
    assert sel.pairs == [] and sel.rejected["gap below margin"] == 1
    sel = select_dynamic_pairs([0.84, 0.80], [6.0, 5.0], [0, 0], ["initial"] * 2, delta_id=0.1)
    assert sel.pairs == [(0, 1)]                             # +20 % in r_dyn is enough


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_frontier_never_pairs_a_dominated_winner(seed):
    rng = np.random.default_rng(seed)
    r_id, r_dyn, prompt, source = random_repository(rng, k=8, ties=seed % 2 == 0)
    max_uses = int(rng.integers(1, 4))
    max_pairs = None if seed % 3 else int(rng.integers(1, 10))
    sel = select_dynamic_pairs(r_id, r_dyn, prompt, source, delta_id=0.1, max_uses=max_uses, max_pairs=max_pairs)
    assert sel.pairs
    uses = np.zeros(len(r_id), int)
    for (w, l), p in zip(sel.pairs, sel.prompts):
        assert source[w] != "static" and source[l] != "static"
        assert prompt[w] == prompt[l] == p                   # never across prompts
        group = [k for k in range(len(r_id)) if prompt[k] == p and source[k] != "static"]
        dominated_by = [k for k in group if r_id[k] >= r_id[w] and r_dyn[k] >= r_dyn[w]
                        and (r_id[k] > r_id[w] or r_dyn[k] > r_dyn[w])]
        assert dominated_by == [], "the winner must be on its prompt's frontier"
        assert r_id[w] >= r_id[l] and r_dyn[w] >= r_dyn[l]   # loser dominated ...
        assert (r_id[w] - r_id[l] >= 0.05 - 1e-9                # ... by a margin
                or r_dyn[w] - r_dyn[l] >= max(0.2 * r_dyn[l] - 1e-9, 1e-12))
        assert (r_id[w], r_dyn[w]) != (r_id[l], r_dyn[l])
        uses[[w, l]] += 1
    assert uses.max() <= max_uses
    assert max_pairs is None or len(sel.pairs) <= max_pairs
    assert sel.scores == sorted(sel.scores, reverse=True)


# ----------------------------------------------------------------------------- the prompt judge's r_sem

def test_the_floor_drops_exactly_the_generated_videos_below_it_in_both_rules():
    # Identity (prompts as above): B (r_sem 0.1) is below the floor 0.2 and A>B goes; E is static and
    # scored 0.0 but stays (it is the person by construction), so C>D and E>D remain.
    sel = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, tau_dyn=3.0, r_sem=[0.6, 0.1, 0.6, 0.6, 0.0],
                                sem_floor=0.2)
    assert sorted(sel.pairs) == [(2, 3), (4, 3)] and sel.rejected["r_sem < floor (videos)"] == 1
    # Dynamic, one prompt: D (0.1) goes, C exactly at the floor (0.2) stays. Frontier over (r_id, r_dyn,
    # r_sem) of A (0.9, 5, 0.6), B (0.5, 8, 0.6), C (0.8, 4, 0.2): {A, B}; A beats C in all three.
    # Spreads over A, B, C: 0.4, 4, 0.4, so A>C scores 0.1/0.4 + 1/4 + 0.4/0.4 = 1.5.
    r_sem = [0.6, 0.6, 0.2, 0.1, np.nan]
    sel = select_dynamic_pairs(R_ID, R_DYN, [0] * 5, SOURCE, r_sem=r_sem, sem_floor=0.2)
    assert sel.pairs == [(0, 2)] and np.allclose(sel.scores, [1.5])
    assert sel.rejected["r_sem < floor (videos)"] == 1
    # without the floor D is back, as the loser of A and B (spreads 0.5, 5, 0.5): A>D 1 + 0.4 + 1 = 2.4,
    # B>D 0.2 + 1 + 1 = 2.2, A>C 0.2 + 0.2 + 0.8 = 1.2
    sel = select_dynamic_pairs(R_ID, R_DYN, [0] * 5, SOURCE, r_sem=r_sem)
    assert sel.pairs == [(0, 3), (1, 3), (0, 2)] and np.allclose(sel.scores, [2.4, 2.2, 1.2])


def test_r_sem_is_a_third_objective_of_the_dynamic_frontier():
    # C (0.8, 4) is dominated by A (0.9, 5) in (r_id, r_dyn), but follows the prompt far better
    # (0.9 vs 0.2): on the 3-reward frontier it wins against D, and A can no longer beat it.
    # Spreads 0.5, 5, 0.7: C>D 0.8 + 0.2 + 1 = 2.0, A>D 1 + 0.4 + 0 = 1.4, B>D 0.2 + 1 + 0 = 1.2.
    sel = select_dynamic_pairs(R_ID, R_DYN, [0] * 5, SOURCE, r_sem=[0.2, 0.2, 0.9, 0.2, np.nan], max_uses=None)
    assert sel.pairs == [(2, 3), (0, 3), (1, 3)] and np.allclose(sel.scores, [2.0, 1.4, 1.2])
    assert sel.rejected["loser not dominated"] == 6          # A, B, C trade off: no frontier video beats another
    assert select_dynamic_pairs(R_ID, R_DYN, [0] * 5, SOURCE, max_uses=None).pairs == [(0, 3), (1, 3), (0, 2)]


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_three_reward_pairs_match_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    r_id, r_dyn, prompt, source = random_repository(rng, k=8, ties=seed % 2 == 0)
    r_sem = np.round(rng.uniform(0, 1, len(r_id)), 1 if seed % 2 == 0 else 6)   # ties on even seeds
    r_sem[source == "static"] = np.nan
    floor = float(rng.uniform(0, 0.3))
    sel = select_dynamic_pairs(r_id, r_dyn, prompt, source, r_sem=r_sem, sem_floor=floor, max_uses=None)
    rewards = np.stack([r_id, r_dyn, r_sem], 1)              # [N, 3]
    kept = [k for k in range(len(r_id)) if source[k] != "static" and r_sem[k] >= floor]

    def dominates(q, p):
        return (rewards[q] >= rewards[p]).all() and (rewards[q] > rewards[p]).any()

    expected = set()
    for w in kept:
        rivals = [k for k in kept if prompt[k] == prompt[w]]
        if any(dominates(k, w) for k in rivals):
            continue                                         # the winner must be on its prompt's frontier
        for l in rivals:
            margin = (r_id[w] - r_id[l] >= 0.05 - 1e-9
                      or r_dyn[w] - r_dyn[l] >= max(0.2 * r_dyn[l] - 1e-9, 1e-12))
            if l != w and (rewards[w] >= rewards[l]).all() and margin:
                expected.add((w, l))
    assert expected and set(sel.pairs) == expected and len(sel.pairs) == len(expected)
    assert sel.rejected["r_sem < floor (videos)"] == sum(r_sem[source != "static"] < floor)


def test_a_floor_without_scores_or_unscored_generated_videos_is_an_error():
    with pytest.raises(ValueError, match="sem_floor needs r_sem"):
        select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, sem_floor=0.2)
    with pytest.raises(ValueError, match="NaN for 1 generated videos"):
        select_dynamic_pairs(R_ID, R_DYN, PROMPT, SOURCE, r_sem=[0.5, np.nan, 0.5, 0.5, np.nan])


def test_summary_reports_pairs_and_reasons_per_rule():
    ident = select_identity_pairs(R_ID, R_DYN, PROMPT, SOURCE, tau_dyn=3.0)
    dyn = select_dynamic_pairs(R_ID, R_DYN, [0] * 5, SOURCE)
    report = summary(ident, dyn)
    assert report["identity"]["pairs"] == 3 and report["dynamic"]["pairs"] == 3
    assert report["identity"]["rejected"]["dyn gap > τ_dyn"] == 3
    assert report["dynamic"]["rejected"]["static video, not a dynamic candidate (videos)"] == 1
    json.dumps(report)                                       # goes into the run report as is


def test_crop_around_face_centres_the_face_at_the_requested_size():
    image = np.zeros((400, 600, 3), np.uint8)
    crop = crop_around_face(image, (280, 100, 320, 140), aspect=0.5, face_scale=3.0)
    assert crop.shape[:2] == (120, 240)  # 3 × 40 px tall, twice as wide
    # a face at the corner: the crop slides to stay inside the photo, and shrinks if it must
    corner = crop_around_face(image, (0, 0, 200, 200), aspect=1.0, face_scale=3.0)
    assert corner.shape[:2] == (400, 400)


def test_dynamic_id_tolerance_lets_a_moving_face_beat_a_slightly_better_still_one():
    # the toy world's repository in two videos: the base's moving face (0.76, 7.4 px) and the identity model's
    # still face (0.90, 1.2 px). Neither dominates the other, so the paper's rule makes no pair; a tolerance of
    # 0.15 on r_id lets motion win, 0.10 is not enough (the winner trails by 0.14)
    r_id, r_dyn, prompt, source = [0.76, 0.90], [7.4, 1.2], ["p", "p"], ["initial", "finetuned"]
    assert select_dynamic_pairs(r_id, r_dyn, prompt, source, delta_id=0.1).pairs == []
    assert select_dynamic_pairs(r_id, r_dyn, prompt, source, delta_id=0.1, id_tolerance=0.10).pairs == []
    assert select_dynamic_pairs(r_id, r_dyn, prompt, source, delta_id=0.1, id_tolerance=0.15).pairs == [(0, 1)]
    # the tolerance is on r_id alone: the better face that moves less (0.95, 1.0 px) never wins against more motion
    # (0.90, 1.2 px), while the moving one wins though its face trails by 0.05
    sel = select_dynamic_pairs([0.95, 0.90], [1.0, 1.2], prompt, source, delta_id=0.1, id_tolerance=0.15)
    assert sel.pairs == [(1, 0)] and sel.rejected["loser not dominated"] == 1
