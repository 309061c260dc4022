"""train.py end to end on the tiny preset: the whole method runs, and a killed run resumes exactly."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# Small enough for CI (a minute), big enough to cross every stage: static videos, identity LoRA,
# repository, pairs, both DPO phases with checkpoints, evaluation and report.
QUICK = ["--model", "tiny", "--frames", "5", "--height", "64", "--width", "64", "--identity-steps", "8",
         "--dpo-identity-steps", "4", "--dpo-dynamic-steps", "4", "--num-prompts", "2", "--videos-per-prompt", "3",
         "--static-videos", "2", "--eval-prompts", "1", "--eval-seeds", "1", "--sample-steps", "2",
         "--checkpoint-every", "2", "--rank", "4", "--dyn-margin", "0.05"]


def astronaut(tmp_path) -> str:
    from PIL import Image
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return str(path)


def train(args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def test_tiny_run_produces_every_output(tmp_path):
    out = tmp_path / "run"
    process = train(["--ref", astronaut(tmp_path), "--out", str(out), *QUICK, "--cfg-interval", "2"])  # fast mode
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    for name in ("identity_lora", "magicid_lora"):
        assert (out / name / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "report.html").stat().st_size > 10_000
    table = (out / "eval" / "table.md").read_text()
    assert all(name in table for name in ("base", "identity stage", "MagicID"))
    stages = {line.split('"stage": "')[1].split('"')[0] for line in (out / "log.jsonl").read_text().splitlines()}
    assert {"identity", "setup"} <= stages
    # A second start without --resume refuses to overwrite the run.
    again = train(["--ref", astronaut(tmp_path), "--out", str(out), *QUICK])
    _, err = again.communicate(timeout=120)
    assert again.returncode != 0 and "--resume" in err


def test_a_run_killed_at_a_random_moment_resumes_to_the_same_lora(tmp_path):
    ref = astronaut(tmp_path)
    reference_run = train(["--ref", ref, "--out", str(tmp_path / "whole"), *QUICK])
    started = time.monotonic()
    assert reference_run.wait(timeout=600) == 0, reference_run.stderr.read()[-3000:]
    duration = time.monotonic() - started

    seed = int.from_bytes(os.urandom(4), "little")
    kill_after = random.Random(seed).uniform(0.25, 0.85) * duration
    interrupted = train(["--ref", ref, "--out", str(tmp_path / "killed"), *QUICK])
    try:
        interrupted.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        interrupted.send_signal(signal.SIGKILL)
        interrupted.wait()
    resumed = train(["--ref", ref, "--out", str(tmp_path / "killed"), "--resume", *QUICK])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]

    whole = load_file(tmp_path / "whole" / "magicid_lora" / "pytorch_lora_weights.safetensors")
    killed = load_file(tmp_path / "killed" / "magicid_lora" / "pytorch_lora_weights.safetensors")
    assert whole.keys() == killed.keys()
    for key in whole:  # bitwise, not approximately
        assert (whole[key] == killed[key]).all(), f"{key} differs (kill after {kill_after:.1f}s, seed {seed})"


def test_fast_mode_on_a_model_without_fast_sampling_is_refused_before_any_work(tmp_path):
    process = train(["--ref", astronaut(tmp_path), "--out", str(tmp_path / "run"), *QUICK,
                     "--model", "tiny-cogvideox", "--cfg-interval", "2"])
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0 and "--cfg-interval" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "repository").exists()
