"""The population benchmark's statistics and tables (toyworld/benchmark.py, toyworld/protocol.py): the paired
difference MagicID − identity stage, the claims read from it, and Tables 2 and 3 with the change for claim 2
(two online rounds, ours) — each against a hand-worked example. No model: these are the numbers' bookkeeping."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from toyworld import benchmark, protocol  # noqa: E402


def row(variant, identity, prompt, seed, r_dyn, r_id=0.5):
    return dict(variant=variant, identity=identity, prompt=prompt, seed=seed, r_dyn=r_dyn, r_id=r_id)


def test_paired_difference_matches_videos_by_identity_prompt_and_seed():
    """Two identities share prompts and seeds, so pairing by (prompt, seed) alone, or by list order, gives
    another answer; a MagicID video without its identity-stage partner is left out."""
    rows = [row("identity stage", "a", "pan", 0, 1.0), row("MagicID", "a", "pan", 0, 1.5),      # +0.5
            row("identity stage", "b", "pan", 0, 3.0), row("MagicID", "b", "pan", 0, 3.1),      # +0.1
            row("identity stage", "a", "still", 1, 2.0), row("MagicID", "a", "still", 1, 1.8),  # −0.2
            row("MagicID", "b", "still", 1, 9.0),                                               # no partner
            row("base", "a", "pan", 0, 7.0)]
    random.Random(0).shuffle(rows)
    mean, low, high = benchmark.paired_difference(rows, "r_dyn")
    assert mean == pytest.approx((0.5 + 0.1 - 0.2) / 3)
    assert low <= mean <= high and low >= -0.2 - 1e-9 and high <= 0.5 + 1e-9   # a bootstrap of those three
    assert benchmark.paired_difference(rows, "r_dyn", low="base")[0] == pytest.approx(1.5 - 7.0)
    assert benchmark.paired_difference([r for r in rows if r["variant"] != "MagicID"], "r_dyn") is None


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
    paired = benchmark.paired_difference(rows, "r_dyn")
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
    claims = benchmark.check_claims(_table(1.45, 1.53), None, None, paired={"r_dyn": paired_dyn, "r_id": paired_id})
    dyn = [v for k, v in claims.items() if "paired by identity" in k]
    rid = [v for k, v in claims.items() if "paired: MagicID − baseline r_id" in k]
    assert dyn == [dyn_holds] and rid == [id_holds]
    assert claims["  (95 % CIs separate) "] is False        # 1.53 − 0.1 < 1.45 + 0.1: the unpaired test stays
    assert not any("paired" in k for k in benchmark.check_claims(_table(1.45, 1.53), None, None))


def test_ablation_tables_put_each_run_in_its_row_with_its_paired_difference():
    def summary(identity_dyn, magicid_dyn):
        ci = lambda v: (v, v - 0.01, v + 0.01)  # noqa: E731
        metrics = lambda d: {"n": 72, "r_id": ci(0.5), "face_hit_rate": ci(1.0), "r_dyn": ci(d),  # noqa: E731
                             "dynamic_degree": ci(0.0)}
        return {"base": metrics(7.0), "identity stage": metrics(identity_dyn), "MagicID": metrics(magicid_dyn)}

    summaries = {"main": summary(1.1, 1.3), "identity pairs only": summary(1.1, 1.2),
                 "two rounds": summary(1.1, 1.6), "identity pairs only two rounds": summary(1.1, 1.4)}
    paired = {name: {"r_id": (0.01 * i, 0.0, 0.02), "r_dyn": (0.1 * i, 0.05, 0.2)}
              for i, name in enumerate(summaries, start=1)}
    text = protocol.ablation_tables(summaries, judge=None, paired=paired)
    table2, table3 = text.split("## Table 3")
    lines = {line.split(" | ")[0].strip("| "): line for line in table2.splitlines() if line.startswith("| ")}
    assert "1.100 [1.090, 1.110]" in lines["none (identity stage)"] and lines["none (identity stage)"].endswith("| — | — |")
    assert "1.200 [1.190, 1.210]" in lines["identity"] and "+0.200 [+0.050, +0.200]" in lines["identity"]
    assert "1.300" in lines["identity + dynamic (MagicID)"] and "+0.100 [+0.050" in lines["identity + dynamic (MagicID)"]
    assert "1.400" in lines["identity, 2 online rounds (ours)"] and "+0.400" in lines["identity, 2 online rounds (ours)"]
    assert "1.600" in lines["identity + dynamic, 2 online rounds (ours)"]
    assert "+0.300 [+0.050" in lines["identity + dynamic, 2 online rounds (ours)"]
    assert "missing: no toy-world prompt judge" in table3 and "| ID + dynamic + semantic | — | not run" in table3
    assert "| ID | 72 | " in table3 and "1.200 [1.190, 1.210]" in table3.splitlines()[4]


def test_ablation_runs_are_valid_train_flags_and_their_folders_keep_the_old_names():
    for name, flags in protocol.ABLATIONS.items():
        args = train.parse_args(["--ref", "x", *flags])
        assert ("--dpo-dynamic-steps" in flags) == (args.dpo_dynamic_steps == 0)
        assert ("--rounds" in flags) == (args.rounds == 2)
    assert protocol.run_slug("identity pairs only") == "identity_pairs_only"   # folders made before still resume
    assert protocol.run_slug("with judge") == "with_judge"
    assert protocol.run_slug("identity pairs only two rounds") == "identity_pairs_only_two_rounds"


def test_identity_fade_is_per_video_last_third_minus_first_third_over_frames_with_a_face():
    curve = lambda values, found=None: dict(variant="identity stage", prompt="p", seed=0,  # noqa: E731
                                            id_per_frame=values, id_found=found or [True] * len(values))
    rows = [curve([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),                     # thirds 0.85 → 0.45: −0.40
            curve([0.5, 0.0, 0.5, 0.5, 0.2, 0.0], [True, False, True, True, True, False]),  # 0.5 → 0.2: −0.30
            {**curve([0.0] * 6), "variant": "MagicID"}]                # another model: not counted
    mean, low, high = benchmark.identity_fade(rows)
    assert mean == pytest.approx(-0.35) and high < 0
    flat = [curve(list(np.random.default_rng(i).normal(0.5, 0.01, 17))) for i in range(30)]
    assert benchmark.identity_fade(flat)[1] < 0 < benchmark.identity_fade(flat)[2]
    assert benchmark.identity_fade([curve([0.5] * 6, [False] * 6)]) is None
    ci = lambda v: (v, v - 0.1, v + 0.1)  # noqa: E731
    table = {v: {"r_dyn": ci(1.0), "r_id": ci(0.5), "id_curve": {"mean": [0.5, 0.5, 0.49]}}
             for v in ("base", "identity stage", "MagicID")}
    claims = benchmark.check_claims(table, table, None, fade=(-0.005, -0.025, 0.017))
    assert claims["baseline r_id fades over 17 frames (last third < first third)"] is True    # the mean's rule
    assert claims["  (per video, last third − first third: 95 % CI below 0)"] is False         # the interval's
