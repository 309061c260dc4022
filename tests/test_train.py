"""train.py end to end on the tiny preset: the whole method runs, every stage trains from the right start,
and a run killed after any checkpoint resumes exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repository import Repository

REPO = Path(__file__).resolve().parents[1]
# Small enough for CI (a minute), big enough to cross every stage: static videos, identity LoRA,
# repository, pairs, both DPO phases with checkpoints, evaluation and report. The margins make both
# kinds of pairs at this size: --tau-dyn 100 lets the (still) static videos pair with the (moving)
# generated ones as identity pairs, --dyn-margin 0.05 makes dynamic pairs.
QUICK = ["--model", "tiny", "--frames", "5", "--height", "64", "--width", "64", "--identity-steps", "8",
         "--dpo-identity-steps", "4", "--dpo-dynamic-steps", "4", "--num-prompts", "2", "--videos-per-prompt", "3",
         "--static-videos", "2", "--eval-prompts", "1", "--eval-seeds", "1", "--sample-steps", "2",
         "--checkpoint-every", "2", "--rank", "4", "--dyn-margin", "0.05", "--tau-dyn", "100"]
TRAINING_STAGES = {"identity": 2e-3, "dpo_identity_round0": 2e-5, "dpo_dynamic_round0": 2e-5}  # stage: its lr
WARMUP = 10  # train.py's default --warmup


def astronaut(tmp_path) -> str:
    from PIL import Image
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return str(path)


def quick_fast_judged(tiny_clip) -> list[str]:
    """QUICK in fast mode with a third reward (a prompt judge: the tiny CLIP): the flags of conftest's whole_run,
    and of the runs compared with it."""
    return [*QUICK, "--cfg-interval", "2", "--judge", f"clip:{tiny_clip}"]


def one_thread() -> dict:
    """The environment of a run compared bitwise with conftest's whole_run: one thread, as it ran (a matmul's
    summation order depends on the thread count)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train(args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def test_tiny_run_produces_every_output(whole_run, tmp_path, tiny_clip):
    out = whole_run  # conftest's: --cfg-interval 2 (fast mode), --judge clip (3rd reward)
    for name in ("identity_lora", "magicid_lora"):
        assert (out / name / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "report.html").stat().st_size > 10_000
    table = (out / "eval" / "table.md").read_text()
    assert all(name in table for name in ("base", "identity stage", "MagicID"))
    # The prompt judge scored every repository video and the report names it, with CLIP-T.
    entries = Repository(out / "repository").entries()
    assert entries and all(isinstance(e["rewards"]["r_sem"], float) for e in entries)
    assert all(tiny_clip.name in e["rewards"]["r_sem_status"] for e in entries)
    assert tiny_clip.name in table and "CLIP-T" in table and "r_sem" in table
    stages = {line.split('"stage": "')[1].split('"')[0] for line in (out / "log.jsonl").read_text().splitlines()}
    assert {"identity", "setup"} <= stages
    # A second start without --resume refuses to overwrite the run.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = train(["--ref", astronaut(tmp_path), "--out", str(out), *QUICK])
    _, err = again.communicate(timeout=120)
    assert again.returncode != 0 and "--resume" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before  # untouched


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_every_training_stage_runs_and_warms_up_from_lr_over_warmup(whole_run):
    # step 0 trains at lr · 1/warmup (linear warm-up: (step + 1) / warmup), not at 0
    first = {r["stage"]: r for r in read_log(whole_run) if r["step"] == 0}
    for stage, lr in TRAINING_STAGES.items():
        assert stage in first, f"{stage} never trained: the tiny run made no pairs for it"
        assert first[stage]["lr"] == pytest.approx(lr / WARMUP, rel=1e-9), stage


def test_the_first_dpo_step_compares_the_policy_with_the_identity_lora_itself(whole_run):
    # DPO starts from the identity LoRA and its reference is a frozen copy of it (not the base model):
    # at step 0 policy == reference, so the margin is exactly 0 and the loss log 2.
    record = next(r for r in read_log(whole_run) if r["stage"] == "dpo_identity_round0" and r["step"] == 0)
    assert record["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert record["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6)


def test_every_stage_is_timed_once_in_order_with_its_units(whole_run):
    # timings.json (bench/time_to_lora.py's input): one row per stage, and per repository batch of
    # --videos-per-prompt videos (2 sources x 2 prompts); the blocks follow each other without overlapping.
    rows = json.loads((whole_run / "timings.json").read_text())
    # Batch k is scored while batch k + 1 samples: its "scoring" row is the wait for it after that sampling.
    batches = [("repository videos", 3)] + [("repository videos", 3), ("repository scoring", 3)] * 3 + [
        ("repository scoring", 3)]
    assert [(r["stage"], r["units"]) for r in rows] == [
        ("model load", 1), ("text encoder", 1), ("static videos", 2), ("identity", 8), *batches, ("pairs", 1),
        ("dpo_identity_round0", 4), ("dpo_dynamic_round0", 4), ("evaluation videos", 3), ("report", 1)]
    assert all(r["seconds"] >= 0 for r in rows)
    for before, after in zip(rows, rows[1:]):
        assert after["started"] >= before["started"] + before["seconds"] - 0.01, (before, after)
    # every training step's seconds are in the log, and add up to no more than its stage's
    for stage in ("identity", "dpo_identity_round0", "dpo_dynamic_round0"):
        steps = [r["seconds"] for r in read_log(whole_run) if r["stage"] == stage]
        row = next(r for r in rows if r["stage"] == stage)
        assert len(steps) == row["units"] and all(s >= 0 for s in steps) and sum(steps) <= row["seconds"]


def test_a_run_killed_right_after_a_checkpoint_in_each_stage_resumes_to_the_same_lora(whole_run, tmp_path, held_train,
                                                                                      tiny_clip):
    # Killed (SIGKILL: no clean-up) right after the first checkpoint of each training stage is on disk, so
    # each resume restores a mid-stage checkpoint: LoRA and AdamW moments after exactly k steps. A
    # checkpoint taken before optimizer.step, or moments not restored, would make the LoRA differ.
    # The run is held there (conftest.HOLD) until the kill: no machine is too fast for it.
    ref, out = astronaut(tmp_path), tmp_path / "killed"
    steps = {stage: int(QUICK[QUICK.index(flag) + 1]) for stage, flag in
             zip(TRAINING_STAGES, ("--identity-steps", "--dpo-identity-steps", "--dpo-dynamic-steps"))}
    for k, stage in enumerate(TRAINING_STAGES):
        argv = ["--ref", ref, "--out", str(out), *(["--resume"] if k else []), *quick_fast_judged(tiny_clip)]
        held = held_train(tmp_path / f"hold{k}", argv, stage, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=one_thread())
        held.wait_until_held()
        held.process.send_signal(signal.SIGKILL)
        held.process.wait()
        state = json.loads((out / "state.json").read_text())
        last = int(state["latest"][stage].rsplit("step-", 1)[1])
        assert stage not in state["done"] and last < steps[stage], f"killed too late: {stage} was past its last checkpoint"
    resumed = train(["--ref", ref, "--out", str(out), "--resume", *quick_fast_judged(tiny_clip)], env=one_thread())
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]

    for name in ("identity_lora", "magicid_lora"):
        whole = load_file(whole_run / name / "pytorch_lora_weights.safetensors")
        killed = load_file(out / name / "pytorch_lora_weights.safetensors")
        assert whole.keys() == killed.keys()
        for key in whole:  # bitwise, not approximately
            assert (whole[key] == killed[key]).all(), f"{name}: {key} differs"


@pytest.mark.parametrize("fast_flag", [["--cfg-interval", "2"], ["--cache", "sea:0.3"]])
def test_fast_mode_on_a_model_without_fast_sampling_is_refused_before_any_work(tmp_path, fast_flag):
    process = train(["--ref", astronaut(tmp_path), "--out", str(tmp_path / "run"), *QUICK,
                     "--model", "tiny-cogvideox", *fast_flag])
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0 and fast_flag[0] in err and "Traceback" not in err
    assert not (tmp_path / "run" / "repository").exists()


def test_each_logged_step_holds_its_own_numbers_though_they_are_read_a_step_late(tmp_path, monkeypatch):
    # optimize() turns a step's metrics into numbers only after queuing the next step: an off-by-one there
    # would log step k with step k ± 1's loss, gradient norm or seconds. Here all three are known per step in
    # advance: loss = step · ‖θ‖², so ∇ = 2 · step · θ and the (pre-clipping) gradient norm is 2 · step · ‖θ‖;
    # and time is a clock the steps advance by hand (each item of step k takes 0.25 · (k + 1) s), so a record's
    # seconds are its own step's 2 × 0.25 · (k + 1) exactly, whatever the machine's load.
    from functools import partial

    import train
    from model import VideoModel
    from run import Run, StepLog

    model = VideoModel.from_pretrained("tiny")
    model.add_lora(4)
    params = model.lora_parameters("default")
    norms, now = {}, [0.0]
    monkeypatch.setattr(train, "StepLog", partial(StepLog, clock=lambda: now[0]))

    def item_loss(step, item):
        now[0] += 0.25 * (step + 1)  # this item's duration on the injected clock
        norms[step] = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in params)).item()
        loss = step * sum(p.pow(2).sum() for p in params)
        return loss, {"computed_at": torch.tensor(float(step)), "item": torch.tensor(float(item))}

    run = Run(str(tmp_path / "run"), config={"seed": 0}, resume=False)
    args = type("Args", (), {"warmup": 1, "batch_size": 2, "checkpoint_every": 3})()
    train.optimize(run, "identity", model, 7, 1e-3, args, item_loss)
    records = sorted(run.read_log(), key=lambda r: r["step"])
    assert [r["step"] for r in records] == list(range(7))  # checkpoints at 3, 6 and 7 flush what is pending
    for r in records:
        assert r["computed_at"] == r["step"]
        assert r["item"] == pytest.approx(0.5)  # the mean over the batch's items 0 and 1
        assert r["grad_norm"] == pytest.approx(2 * r["step"] * norms[r["step"]], rel=1e-5), r
        assert r["seconds"] == pytest.approx(2 * 0.25 * (r["step"] + 1), abs=1e-12), r


def test_repository_batches_are_scored_on_a_worker_while_the_next_one_samples(tmp_path):
    # build_repository hands batch k to a scoring thread and samples batch k + 1 meanwhile. Each stored video
    # must still carry its own prompt, source, seed and scores (here: its pixel mean, checked against the
    # same seeds sampled and scored inline), and an error while scoring must stop the build, not vanish.
    import argparse
    import threading

    import train
    from model import VideoModel
    from run import StageTimer

    model = VideoModel.from_pretrained("tiny")
    model.add_lora(4)
    with torch.no_grad():  # the fine-tuned source must differ from the initial one
        for p in model.lora_parameters("default"):
            p.normal_(0, 0.3)
    args = argparse.Namespace(seed=0, videos_per_prompt=2, cfg_interval=1, cache=None)
    video = dict(frames=5, height=64, width=64, steps=2)
    prompts = ["a sks person", "a sks person surfing"]
    batches = 2 * len(prompts)  # (initial, finetuned) x prompts
    sampling_began = [threading.Event() for _ in range(batches)]
    real_sample = model.sample

    calls = iter(range(100))

    def sample(*a, **k):  # the real sampler, noting when each batch's sampling begins
        call = next(calls)
        if call < batches:
            sampling_began[call].set()
        return real_sample(*a, **k)

    model.sample = sample
    repo = Repository(tmp_path / "repo")
    overlapped, threads = [], []

    def scored_add(videos, latents, prompts_, source, seeds):
        k = len(threads)
        threads.append(threading.current_thread().name)
        if k + 1 < batches:  # inline scoring would block the next sampling here: the wait would time out
            overlapped.append(sampling_began[k + 1].wait(timeout=30))
        for clip, z, prompt, seed in zip(videos, latents, prompts_, seeds):
            repo.add(z, prompt, source, {"r_id": float(clip.mean()), "r_dyn": 0.0}, seed, video=clip)

    train.build_repository(repo, model, prompts, 0, args, video, scored_add, StageTimer())
    assert overlapped == [True] * (batches - 1)
    assert all(name.startswith("scoring") for name in threads) and len(threads) == batches
    stored = {(e["prompt"], e["source"], e["seed"]): e["rewards"]["r_id"] for e in Repository(repo.root).entries()}
    assert len(stored) == batches * args.videos_per_prompt
    for source, adapter in (("initial", None), ("finetuned", "default")):
        for prompt in prompts:
            with model.adapter(adapter):
                videos, _ = real_sample([prompt] * 2, seed=[0, 1], **video)
            for seed, clip in zip([0, 1], videos):
                assert stored[(prompt, source, seed)] == pytest.approx(float(clip.mean()), abs=1e-9)
    assert len({round(v, 6) for v in stored.values()}) == len(stored)  # every video its own

    # An error while scoring a middle batch surfaces after the next sampling, one in the last batch at the end.
    for failing_prompt, stored_sources in ((prompts[0], {"initial"}), (prompts[-1], {"initial", "finetuned"})):
        again = Repository(tmp_path / f"again-{len(stored_sources)}")

        def failing_scored_add(videos, latents, prompts_, source, seeds):
            if source == "finetuned" and prompts_[0] == failing_prompt:
                raise RuntimeError("scoring broke")
            for clip, z, prompt, seed in zip(videos, latents, prompts_, seeds):
                again.add(z, prompt, source, {"r_id": float(clip.mean()), "r_dyn": 0.0}, seed, video=clip)

        with pytest.raises(RuntimeError, match="scoring broke"):
            train.build_repository(again, model, prompts, 0, args, video, failing_scored_add, StageTimer())
        entries = Repository(again.root).entries()  # what was scored before the error stays
        assert {e["source"] for e in entries} == stored_sources
        assert len(entries) == (len(stored_sources) * len(prompts) - (len(stored_sources) - 1)) * args.videos_per_prompt
