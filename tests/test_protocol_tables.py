"""The population benchmark's statistics and tables (toyworld/claims.py, toyworld/protocol.py): the paired
difference MagicID − identity stage, identity fading per video, the claims read from them, and Tables 2 and 3 with
the change for claim 2 (two online rounds, ours) — each against a hand-worked example. No model: bookkeeping."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from toyworld import claims, protocol  # noqa: E402


def row(variant, identity, prompt, seed, r_dyn, r_id=0.5):
    return dict(variant=variant, identity=identity, prompt=prompt, seed=seed, r_dyn=r_dyn, r_id=r_id)


def test_paired_difference_matches_videos_by_identity_prompt_and_seed():
    """Two identities share prompts and seeds and one prompt has two seeds, so pairing by (prompt, seed), by
    (identity, prompt) or by list order gives another answer; a video without its partner, or without the
    metric, is left out; two videos of one model under one key are refused."""
    rows = [row("identity stage", "a", "pan", 0, 1.0), row("MagicID", "a", "pan", 0, 1.5),      # +0.5
            row("identity stage", "a", "pan", 1, 4.0), row("MagicID", "a", "pan", 1, 4.3),      # +0.3
            row("identity stage", "b", "pan", 0, 3.0), row("MagicID", "b", "pan", 0, 3.1),      # +0.1
            row("identity stage", "a", "still", 1, 2.0), row("MagicID", "a", "still", 1, 1.8),  # −0.2
            row("MagicID", "b", "still", 1, 9.0),                                               # no partner
            row("identity stage", "b", "walk", 2, None), row("MagicID", "b", "walk", 2, 5.0),   # no metric
            row("base", "a", "pan", 0, 7.0)]
    random.Random(0).shuffle(rows)
    mean, low, high = claims.paired_difference(rows, "r_dyn")
    assert mean == pytest.approx((0.5 + 0.3 + 0.1 - 0.2) / 4)
    assert low <= mean <= high and low >= -0.2 - 1e-9 and high <= 0.5 + 1e-9   # a bootstrap of those four
    assert claims.paired_difference(rows, "r_dyn", baseline="base")[0] == pytest.approx(1.5 - 7.0)
    assert claims.paired_difference([r for r in rows if r["variant"] != "MagicID"], "r_dyn") is None
    with pytest.raises(ValueError, match="mixed"):
        claims.paired_difference(rows + [row("identity stage", "a", "pan", 0, 1.2)], "r_dyn")


def test_paired_interval_sees_a_shift_the_unpaired_intervals_hide():
    """Fresh random prompts that move from 1 to 9 px, MagicID +0.1 px on each: the unpaired intervals overlap,
    the paired one is above 0 (why the claims read both)."""
    rng = np.random.default_rng()
    base_motion = rng.uniform(1, 9, size=40)
    noise = rng.normal(0, 0.02, size=40)
    rows = [row("identity stage", "x", f"p{i}", 0, m) for i, m in enumerate(base_motion)]
    rows += [row("MagicID", "x", f"p{i}", 0, m + 0.1 + e) for i, (m, e) in enumerate(zip(base_motion, noise))]
    import evaluate

    unpaired = {v: evaluate.bootstrap_ci([r["r_dyn"] for r in rows if r["variant"] == v])
                for v in ("identity stage", "MagicID")}
    assert unpaired["identity stage"][2] > unpaired["MagicID"][1]   # the unpaired intervals overlap
    paired = claims.paired_difference(rows, "r_dyn")
    assert paired[1] > 0 and paired[0] == pytest.approx(0.1 + noise.mean())


def _table(identity_dyn, magicid_dyn, identity_id=0.5, magicid_id=0.5):
    ci = lambda v: (v, v - 0.1, v + 0.1)  # noqa: E731
    return {"base": {"r_dyn": ci(7.0), "r_id": ci(0.0)},
            "identity stage": {"r_dyn": ci(identity_dyn), "r_id": ci(identity_id)},
            "MagicID": {"r_dyn": ci(magicid_dyn), "r_id": ci(magicid_id)}}


@pytest.mark.parametrize("paired_dyn, paired_id, dyn_holds, id_holds", [
    ((0.08, 0.03, 0.13), (0.015, 0.002, 0.027), True, True),
    ((0.08, -0.01, 0.17), (-0.05, -0.09, -0.01), False, False),
    ((0.08, 0.001, 0.17), (-0.01, -0.03, 0.0), True, True),     # r_id: "not below" = the interval reaches 0
])
def test_claims_read_the_paired_intervals(paired_dyn, paired_id, dyn_holds, id_holds):
    held = claims.check_claims(_table(1.45, 1.53), None, None, 17, paired={"r_dyn": paired_dyn, "r_id": paired_id})
    dyn = [v for k, v in held.items() if "paired by identity" in k]
    rid = [v for k, v in held.items() if "paired: MagicID − baseline r_id" in k]
    assert dyn == [dyn_holds] and rid == [id_holds]
    assert held["  (95 % CIs separate) "] is False        # 1.53 − 0.1 < 1.45 + 0.1: the unpaired test stays
    assert not any("paired" in k for k in claims.check_claims(_table(1.45, 1.53), None, None, 17))


def test_ablation_tables_put_each_run_in_its_row_with_its_paired_difference():
    def summary(identity_dyn, magicid_dyn):
        ci = lambda v: (v, v - 0.01, v + 0.01)  # noqa: E731
        metrics = lambda d: {"n": 72, "r_id": ci(0.5), "face_hit_rate": ci(1.0), "r_dyn": ci(d),  # noqa: E731
                             "dynamic_degree": ci(0.0)}
        return {"base": metrics(7.0), "identity stage": metrics(identity_dyn), "MagicID": metrics(magicid_dyn)}

    summaries = {"main": summary(1.1, 1.3), "identity pairs only": summary(1.9, 1.2),   # 1.9: not the main's stage
                 "two rounds": summary(1.1, 1.6), "identity pairs only two rounds": summary(1.1, 1.4),
                 "with judge": summary(1.1, 1.7)}
    paired = {name: {"r_id": (0.01 * i, 0.001 * i, 0.02), "r_dyn": (0.1 * i, 0.05, 0.2)}   # main 1, ..., judge 5
              for i, name in enumerate(summaries, start=1)}

    def table_rows(text):
        return {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()
                if line.startswith("| ") and not line.startswith("| row")}

    table2, table3 = (table_rows(t) for t in protocol.ablation_tables(summaries, "clip:x", paired).split("## Table 3"))
    header = next(line for line in protocol.ablation_tables(summaries, "clip:x", paired).splitlines()
                  if line.startswith("| row"))
    assert header.endswith("| Δr_id paired | Δr_dyn paired |")
    # columns: row, n, r_id, face_hit_rate, r_dyn, dynamic_degree, Δr_id, Δr_dyn
    expected2 = {"none (identity stage)": ("1.100 [1.090, 1.110]", "—", "— |"),
                 "identity": ("1.200 [1.190, 1.210]", "+0.020 [+0.002, +0.020]", "+0.200 [+0.050, +0.200] |"),
                 "identity + dynamic (MagicID)": ("1.300 [1.290, 1.310]", "+0.010 [+0.001, +0.020]",
                                                  "+0.100 [+0.050, +0.200] |"),
                 "identity, 2 online rounds (ours)": ("1.400 [1.390, 1.410]", "+0.040 [+0.004, +0.020]",
                                                      "+0.400 [+0.050, +0.200] |"),
                 "identity + dynamic, 2 online rounds (ours)": ("1.600 [1.590, 1.610]", "+0.030 [+0.003, +0.020]",
                                                                "+0.300 [+0.050, +0.200] |")}
    assert {name: (cells[4], cells[6], cells[7]) for name, cells in table2.items()} == expected2
    assert {name: (cells[4], cells[7]) for name, cells in table3.items()} == {
        "ID": ("1.200 [1.190, 1.210]", "+0.200 [+0.050, +0.200] |"),
        "ID + dynamic": ("1.300 [1.290, 1.310]", "+0.100 [+0.050, +0.200] |"),
        "ID + dynamic + semantic": ("1.700 [1.690, 1.710]", "+0.500 [+0.050, +0.200] |")}
    without_judge = protocol.ablation_tables({k: v for k, v in summaries.items() if k != "with judge"}, None, paired)
    assert "missing: no toy-world prompt judge" in without_judge
    assert "| ID + dynamic + semantic | — | not run" in without_judge


def test_ablation_runs_are_valid_train_flags_and_their_folders_keep_the_old_names():
    for name, flags in protocol.ABLATIONS.items():
        args = train.parse_args(["--ref", "x", *flags])
        assert ("--dpo-dynamic-steps" in flags) == (args.dpo_dynamic_steps == 0)
        assert ("--rounds" in flags) == (args.rounds == 2)
    out = Path("runs")
    assert protocol.run_folder(out, "procedural_1") == out / "procedural_1"
    assert protocol.run_folder(out, "procedural_1", "identity pairs only") == out / "procedural_1__identity_pairs_only"
    assert protocol.run_folder(out, "procedural_1", "with judge") == out / "procedural_1__with_judge"   # as before
    assert protocol.run_folder(out, "a/b", "identity pairs only two rounds") == out / "a_b__identity_pairs_only_two_rounds"


def test_identity_fade_is_per_video_last_third_minus_first_third_over_frames_with_a_face():
    curve = lambda values, found=None: dict(variant="identity stage", prompt="p", seed=0,  # noqa: E731
                                            id_per_frame=values, id_found=found or [True] * len(values))
    rows = [curve([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),                     # thirds 0.85 → 0.45: −0.40
            curve([0.5, 0.0, 0.5, 0.5, 0.2, 0.0], [True, False, True, True, True, False]),  # 0.5 → 0.2: −0.30
            {**curve([0.0] * 6), "variant": "MagicID"}]                # another model: not counted
    mean, low, high = claims.identity_fade(rows)
    assert mean == pytest.approx(-0.35) and high < 0
    flat = [curve(list(np.random.default_rng(i).normal(0.5, 0.01, 17))) for i in range(30)]
    assert claims.identity_fade(flat)[1] < 0 < claims.identity_fade(flat)[2]
    assert claims.identity_fade([curve([0.5] * 6, [False] * 6)]) is None
    ci = lambda v: (v, v - 0.1, v + 0.1)  # noqa: E731
    table = {v: {"r_dyn": ci(1.0), "r_id": ci(0.5), "id_curve": {"mean": [0.5, 0.5, 0.49]}}
             for v in ("base", "identity stage", "MagicID")}
    held = claims.check_claims(table, table, None, 17, fade=(-0.005, -0.025, 0.017))
    assert held["baseline r_id fades over 17 frames (last third < first third)"] is True    # the mean's rule
    assert held["  (per video, last third − first third: 95 % CI below 0)"] is False         # the interval's
