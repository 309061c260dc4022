"""bench/time_to_lora.py's arithmetic: a reduced run's pieces extrapolated to a full preset, by hand."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from time_to_lora import (extrapolate_stage, full_units, stage_pieces, stage_table, train_args,  # noqa: E402
                          unit_cost)


def test_a_compiling_first_step_is_counted_once_not_once_per_step():
    # 4 DPO steps: the first compiles (50 s), then ~6 s each; 1 s of overhead (optimizer, last checkpoint).
    pieces = [(1, 50.0), (1, 6.0), (1, 6.5), (1, 5.5), (0, 1.0)]
    assert unit_cost(pieces) == pytest.approx(6.25)                  # median of 50, 6, 6.5, 5.5
    # measured 69 s, plus 296 more steps at 6.25 s; a mean (17 s/step) would have said 5,100 s
    assert extrapolate_stage(pieces, 300) == pytest.approx(69.0 + 296 * 6.25)


def test_batches_of_videos_cost_per_video_and_a_lone_piece_scales_linearly():
    # repository batches of 3 videos: 30, 33 and 60 s (the last compiled a new graph): 10, 11, 20 s/video
    batches = [(3, 30.0), (3, 33.0), (3, 60.0)]
    assert unit_cost(batches) == pytest.approx(11.0)
    assert extrapolate_stage(batches, 12) == pytest.approx(123.0 + 3 * 11.0)
    assert extrapolate_stage([(2, 20.0)], 16) == pytest.approx(160.0)    # 2 static videos in 20 s -> 16 in 160 s
    assert extrapolate_stage([(1, 42.0)], 1) == pytest.approx(42.0)      # counted once: model load, report


def test_full_units_count_train_py_loops():
    args = train_args(Path("some/wan-folder"), ["--num-prompts", "5", "--videos-per-prompt", "3", "--rounds", "2",
                                                "--static-videos", "7", "--identity-steps", "11",
                                                "--dpo-identity-steps", "13", "--dpo-dynamic-steps", "17",
                                                "--eval-prompts", "2", "--eval-seeds", "4"])
    units = full_units(args)
    # round 0: initial + finetuned videos, round 1: finetuned only: (2 + 1) sources x 5 prompts x 3 videos
    assert units["repository videos"] == units["repository scoring"] == 45
    assert units["static videos"] == 7 and units["identity"] == 11
    assert units["dpo_identity"] == 26 and units["dpo_dynamic"] == 34   # per round
    assert units["evaluation videos"] == 24                             # 3 models x 2 prompts x 4 seeds
    assert units["model load"] == units["report"] == units["other"] == 1


def test_pieces_come_from_timings_steps_and_evaluation_files(tmp_path):
    rows = [{"stage": "model load", "units": 1, "seconds": 30.0, "started": 1000.0},
            {"stage": "dpo_identity_round0", "units": 2, "seconds": 20.0, "started": 1030.0},
            {"stage": "evaluation videos", "units": 2, "seconds": 50.0, "started": 1050.0}]
    (tmp_path / "timings.json").write_text(json.dumps(rows))
    steps = [{"stage": "dpo_identity_round0", "step": 0, "seconds": 14.0},
             {"stage": "dpo_identity_round0", "step": 1, "seconds": 5.0}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(s) for s in [{"stage": "setup", "step": 0}, *steps]))
    (tmp_path / "eval").mkdir()
    for name, end in (("base_p0_s0.json", 1080.0), ("magicid_p0_s0.json", 1095.0)):  # videos end at +30, +45 s
        (tmp_path / "eval" / name).write_text("{}")
        os.utime(tmp_path / "eval" / name, (end, end))
    pieces = stage_pieces(tmp_path, wall=110.0)
    assert pieces["model load"] == [(1, 30.0)]
    assert pieces["dpo_identity"] == [(1, 14.0), (1, 5.0), (0, pytest.approx(1.0))]   # the round suffix dropped
    assert pieces["evaluation videos"] == [(1, 30.0), (1, 15.0), (0, 5.0)]
    assert pieces["other"] == [(1, 10.0)]                                          # 110 s wall, 100 s in stages


def test_a_stage_the_reduced_run_never_timed_is_named_not_counted_as_free():
    # no dynamic pairs in the reduced run: 0 DPO steps, 0.5 s of set-up; the full preset wants 300 steps
    pieces = {"model load": [(1, 30.0)], "dpo_dynamic": [(0, 0.5)], "identity": [(1, 9.0), (1, 2.0), (1, 2.0)]}
    rows, total, note = stage_table(pieces, {"model load": 1, "dpo_dynamic": 300, "identity": 10})
    assert total == pytest.approx(30.0 + 13.0 + 7 * 2.0)
    assert "dpo_dynamic" in note and ["dpo_dynamic", 0, "0.5", "not measured", 300, "?"] in rows
