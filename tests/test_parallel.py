"""Two processes (torchrun, as `accelerate launch` starts them; gloo on CPU) train exactly like one."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from test_train import REPO, astronaut, one_thread, quick_fast_judged

import parallel


def test_shard_splits_jobs_without_overlap_or_loss():
    jobs = list(range(11))
    shares = [jobs[rank::3] for rank in range(3)]  # what parallel.shard gives rank r of 3
    assert sorted(sum(shares, [])) == jobs
    assert parallel.shard(jobs) == jobs  # one process: everything


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_give_the_single_process_loss_curve_and_lora(whole_run, tmp_path, tiny_clip):
    # One process: conftest's whole_run. Two, on the same photo and flags (fast mode, a CLIP judge), each on one
    # thread as it ran (torchrun's default): a matmul's summation order depends on it.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    result = subprocess.run([*torchrun, str(REPO / "train.py"), "--ref", astronaut(tmp_path), "--out",
                             str(tmp_path / "two"), *quick_fast_judged(tiny_clip)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=one_thread())
    assert result.returncode == 0, result.stderr[-3000:]
    single, double = read_log(whole_run), read_log(tmp_path / "two")
    curve = lambda log: {(r["stage"], r["step"]): r["loss"] for r in log if "loss" in r}
    one, two = curve(single), curve(double)
    assert one.keys() == two.keys() and any(stage.startswith("dpo") for stage, _ in one)
    for key in one:  # same global batch: equal up to float summation order
        assert abs(one[key] - two[key]) <= 1e-5 * max(1.0, abs(one[key])), key
    a = load_file(whole_run / "magicid_lora" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "two" / "magicid_lora" / "pytorch_lora_weights.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # each repository video was generated once, by one of the two processes
    videos = sorted(p.name for p in (tmp_path / "two" / "repository" / "videos").glob("*.safetensors"))
    assert videos == sorted(p.name for p in (whole_run / "repository" / "videos").glob("*.safetensors"))
