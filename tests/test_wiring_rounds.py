"""train.py's wiring across a whole run (issue 29, item 3): the online rounds and the report's columns.

One tiny run with --rounds 2 at the smallest settings, in this process, with three of train.py's stages
watched (the real functions run; the watchers only copy what they were given): build_repository (which
round, and the adapters it samples with), optimize (each stage's LoRA when it ends) and evaluate.evaluate
(which adapter each report row is made with). Checked against what the method says, worked out here:
  - round r's new videos have seeds seed + 1000·r + k (a schedule written out below), so round 1 makes new
    videos, of the fine-tuned model only;
  - round 1 samples with, and measures DPO against, round 0's result: policy and reference are both the
    LoRA that round 0's last stage ended with (so DPO round 1's first step has margin 0, loss log 2);
  - the report's "identity stage" row is made with the identity-stage LoRA, its "MagicID" row with the
    final LoRA, and report.html shows each row's own numbers.
"""

import gc
import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data

import evaluate
import train
from repository import Repository
from run import RunFolderError, RunLock

K = 2  # --videos-per-prompt
ARGV = ["--model", "tiny", "--frames", "5", "--height", "64", "--width", "64", "--identity-steps", "2",
        "--dpo-identity-steps", "2", "--dpo-dynamic-steps", "2", "--num-prompts", "1", "--videos-per-prompt", str(K),
        "--static-videos", "2", "--eval-prompts", "1", "--eval-seeds", "1", "--sample-steps", "2",
        "--checkpoint-every", "100", "--rank", "2", "--rounds", "2",
        "--tau-dyn", "100",      # the (still) static videos pair with the generated ones: identity pairs exist
        "--dpo-lr", "1e-2"]      # DPO moves the LoRA far enough that a stale reference shows


def snapshot(model, adapter):
    """A copy of adapter `adapter`'s weights under the keys a saved LoRA file uses (None: the base model)."""
    if adapter is None:
        return None
    return {"transformer." + key.replace(f".{adapter}.", "."): p.detach().clone()
            for key, p in model.transformer.named_parameters() if "lora_" in key and f".{adapter}." in key}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """The run's folder, and what the watchers saw: {"repository": [(round, default, reference)],
    "stages": {stage: default LoRA at its end}, "evaluation": (variants, their LoRAs, results)}."""
    folder = tmp_path_factory.mktemp("rounds")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    seen = {"repository": [], "stages": {}}
    real_build, real_optimize, real_evaluate = train.build_repository, train.optimize, evaluate.evaluate

    def build_repository(repo, model, prompts, round_index, *rest):
        seen["repository"].append((round_index, snapshot(model, "default"), snapshot(model, "reference")))
        return real_build(repo, model, prompts, round_index, *rest)

    def optimize(run, stage, model, *rest):
        real_optimize(run, stage, model, *rest)
        seen["stages"][stage] = snapshot(model, "default")

    def evaluate_(model, variants, *rest, **kwargs):
        loras = {name: snapshot(model, adapter) for name, adapter in variants.items()}
        results = real_evaluate(model, variants, *rest, **kwargs)
        seen["evaluation"] = (dict(variants), loras, results)
        return results

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "build_repository", build_repository)
        patch.setattr(train, "optimize", optimize)
        patch.setattr(evaluate, "evaluate", evaluate_)
        gc.disable()   # no collection may free the run's lock behind train()'s back: it must let it go itself
        try:
            out = train.train(train.parse_args(["--ref", str(folder / "astronaut.png"), "--out", str(folder / "run"),
                                                *ARGV]))
            try:
                RunLock(str(out)).release()
                seen["lock after the run"] = "free"
            except RunFolderError:
                seen["lock after the run"] = "held"
        finally:
            gc.enable()
            torch.set_flush_denormal(False)  # train() sets it for its process; the other tests expect the default
    return out, seen


def test_round_one_generates_new_videos_with_its_own_seeds(watched_run):
    out, seen = watched_run
    assert [round_index for round_index, _, _ in seen["repository"]] == [0, 1]
    stored = {}
    for entry in Repository(out / "repository").entries():
        stored.setdefault(entry["source"], set()).add(entry["seed"])
    # --seed 0: static videos 0..1; round 0: both models, seeds 0..K-1; round 1: the fine-tuned model, 1000..1000+K-1
    assert stored == {"static": {0, 1}, "initial": {0, 1}, "finetuned": {0, 1, 1000, 1001}}


def test_round_one_samples_and_measures_dpo_from_round_zeros_result(watched_run):
    out, seen = watched_run
    identity = seen["stages"]["identity"]
    round0 = seen["stages"]["dpo_dynamic_round0"]             # the LoRA round 0 ended with
    assert not same(round0, identity), "round 0's DPO did not move the LoRA: this run cannot test the rounds"
    (_, default0, reference0), (_, default1, reference1) = seen["repository"]
    assert same(default0, identity) and same(reference0, identity)   # round 0: the identity model, both
    assert same(default1, round0), "round 1 samples with another LoRA than round 0's result"
    assert same(reference1, round0), "round 1's DPO reference is not round 0's result"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r["stage"] == "dpo_identity_round1" and r["step"] == 0)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)   # policy == reference at the round's start
    assert first["loss_dpo"] == pytest.approx(math.log(2), abs=1e-6)


def test_the_report_shows_each_model_in_its_own_row(watched_run):
    out, seen = watched_run
    variants, loras, results = seen["evaluation"]
    assert list(variants) == ["base", "identity stage", "MagicID"] and variants["base"] is None
    # each row's LoRA, against the files train.py saved (and the stages' ends)
    for name, folder, stage in (("identity stage", "identity_lora", "identity"),
                                ("MagicID", "magicid_lora", "dpo_dynamic_round1")):
        assert same(loras[name], load_file(out / folder / "pytorch_lora_weights.safetensors")), name
        assert same(loras[name], seen["stages"][stage]), name
    # report.html: the row named "identity stage" holds the identity stage's numbers, MagicID's its own
    page = (out / "report.html").read_text()
    for name in ("identity stage", "MagicID"):
        r_dyn = "{:.3f} [{:.3f}, {:.3f}]".format(*results["summary"][name]["r_dyn"])
        row = page.split(f"<tr><td>{name}</td>", 1)[1].split("</tr>", 1)[0]
        assert r_dyn in row, (name, r_dyn, row)
    assert results["summary"]["identity stage"]["r_dyn"] != results["summary"]["MagicID"]["r_dyn"]


def test_a_resume_keeps_each_rounds_pairs(watched_run):
    """Resuming the finished run (its repository now holds round 1's videos too) must not choose round 0's pairs
    again from them (it did: pairs_round0.json was rewritten with pairs of round-1 videos). In this process, so
    the finished run must have let its folder's lock go. Last in this file: it resumes the shared run."""
    out, seen = watched_run
    assert seen["lock after the run"] == "free"   # a finished train() lets its folder go (RunLock.release)
    before = {name: (out / name).read_text() for name in ("pairs_round0.json", "pairs_round1.json")}
    assert any(e["seed"] >= 1000 for e in Repository(out / "repository").entries())   # round 1's videos are there
    try:
        train.train(train.parse_args(["--ref", str(out.parent / "astronaut.png"), "--out", str(out), "--resume",
                                      *ARGV]))
    finally:
        torch.set_flush_denormal(False)
    assert {name: (out / name).read_text() for name in before} == before
