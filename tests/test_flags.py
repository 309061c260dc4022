"""Every numeric and choice flag of train.py, generate.py and evaluate.py given a value that cannot work (issue 31):
exit code 2, exactly one stderr line that names the flag and what it may be, no traceback, --out not created,
and no model load begun.

Each case is its own process, as a user runs it: the script is imported once per command (its imports are the
slow part), then forked once per case; the child runs the script as __main__ with the case's argv. A tripwire
on model.VideoModel.from_pretrained ends a child that reaches a model load with exit code 99; one valid command
per script must trip it, which shows the tripwire works and that the checks pass a good command through.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flags

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, os, runpy, sys, traceback
script, cases, results = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
sys.path.insert(0, os.getcwd())
__import__(script[:-3])  # the slow imports, once
import model

def tripwire(*args, **kwargs):
    os.write(2, b"a model load began\\n")
    os._exit(99)

model.VideoModel.from_pretrained = tripwire
codes = []
for i, argv in enumerate(cases):
    pid = os.fork()
    if pid == 0:  # the child: the script as python runs it, stderr into its own file
        err = os.open(os.path.join(results, f"{i}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.argv = [script, *argv]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:  # what the interpreter does with it
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
open(os.path.join(results, "codes.json"), "w").write(json.dumps(codes))
"""

# (flag, impossible value, what the line must say is allowed): hand-written, not read from flags.py
TRAIN = [
    ("--seed", "-1", "from 0 to 4294967295"), ("--identity-steps", "-5", ">= 0"),
    ("--dpo-identity-steps", "-1", ">= 0"), ("--dpo-dynamic-steps", "-1", ">= 0"), ("--rounds", "0", ">= 1"),
    ("--lr", "-1", "> 0"), ("--lr", "0", "> 0"),
    ("--lr", "nan", "> 0"), ("--dpo-lr", "0", "> 0"), ("--warmup", "-1", ">= 0"), ("--rank", "0", ">= 1"),
    ("--batch-size", "0", ">= 1"), ("--checkpoint-every", "0", ">= 1"), ("--checkpoint-blocks", "-1", ">= 0"),
    ("--offload-blocks", "-1", ">= 0"), ("--frames", "0", "4k+1"), ("--frames", "8", "4k+1"),
    ("--height", "0", "multiple of 16"), ("--width", "50", "multiple of 16"), ("--sample-steps", "0", ">= 1"),
    ("--cfg-interval", "0", ">= 1"), ("--static-videos", "0", ">= 1"), ("--face-framing", "-1", ">= 0"),
    ("--jitter", "-0.1", "[0, 1)"), ("--jitter", "1", "[0, 1)"), ("--num-prompts", "0", ">= 1"),
    ("--videos-per-prompt", "0", ">= 1"), ("--delta-id", "-0.1", ">= 0"), ("--tau-dyn", "-1", ">= 0"),
    ("--dyn-margin", "-1", ">= 0"), ("--dyn-id-tolerance", "-1", ">= 0"), ("--max-pairs", "0", ">= 1"),
    ("--max-uses", "0", ">= 1"), ("--beta", "-1", "> 0"), ("--beta", "0", "> 0"), ("--beta", "inf", "> 0"),
    ("--sft-weight", "-1", ">= 0"), ("--eval-prompts", "0", ">= 1"), ("--eval-seeds", "0", "1 to 100"),
    ("--eval-seeds", "101", "1 to 100"), ("--rank", "x", "invalid int value"), ("--lr", "fast", "invalid float"),
    ("--lora-targets", "everything", "invalid choice"), ("--id-backend", "arcface", "invalid choice"),
    ("--token", "", "one word"), ("--token", "my friend", "one word"), ("--device", "gpu", "cpu, cuda or cuda:N"),
    ("--attention-backend", "fastest", "fa4, sdpa or one of"), ("--cache", "sea:x", "first-block:"),
    ("--judge", "gpt:x", "clip:DIR or vlm:DIR"), ("--sem-floor", "0.2", "needs a prompt judge"),
    ("--offload-blocks", "2", "needs --grad-checkpointing"), ("--resume", None, "holds a run"),
]
GENERATE = [
    ("--frames", "0", "4k+1"), ("--frames", "8", "4k+1"), ("--height", "0", "multiple of 16"),
    ("--width", "20", "multiple of 16"), ("--steps", "0", ">= 1"), ("--guidance", "-1", ">= 0"),
    ("--seed", "-1", "from 0 to"), ("--videos-per-prompt", "0", ">= 1"), ("--token", "a b", "one word"),
    ("--frames", "x", "invalid int value"), ("--device", "cuda:x", "cpu, cuda or cuda:N"),
    ("--attention-backend", "fastest", "fa4, sdpa or one of"),
]
EVALUATE = [
    ("--seeds", "0", "1 to 100"), ("--seeds", "101", "1 to 100"), ("--seed", "-1", "from 0 to"),
    ("--frames", "0", "4k+1"), ("--height", "8", "multiple of 16"), ("--width", "8", "multiple of 16"),
    ("--steps", "0", ">= 1"), ("--id-frames", "0", ">= 1"), ("--token", "", "one word"),
    ("--judge", "clip", "clip:DIR or vlm:DIR"), ("--id-backend", "x", "invalid choice"),
    ("--device", "cuda:x", "cpu, cuda or cuda:N"),
]
try:
    import torch
    NO_CUDA = not torch.cuda.is_available()
except ImportError:
    NO_CUDA = False
if NO_CUDA:  # the case: a traceback "Torch not compiled with CUDA enabled" after the model loaded
    for table in (TRAIN, GENERATE, EVALUATE):
        table.append(("--device", "cuda", "must be cpu on this machine"))


def command(script: str, folder: Path, extra: list[str]) -> list[str]:
    """A command of `script` that would start (given `extra` changes nothing), writing only into folder/out."""
    if script == "train.py":
        return ["--ref", str(REPO / "examples" / "astronaut.jpg"), "--model", "tiny", "--out", str(folder / "out"),
                *extra]
    if script == "generate.py":
        return ["--model", "tiny", "--prompt", "a sks person", "--out", str(folder / "out"), *extra]
    lora = folder / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")  # only its presence is checked before the load
    return ["--model", "tiny", "--ref", str(REPO / "examples" / "astronaut.jpg"), "--lora-baseline", str(lora),
            "--lora-magicid", str(lora), "--out", str(folder / "out"), *extra]


def run_cases(script: str, tmp: Path, table: list) -> list[dict]:
    cases, results = [], []
    for i, (flag, value, allowed) in enumerate(table + [(None, None, None)]):  # the last: the valid command
        folder = tmp / f"case{i}"
        folder.mkdir()
        extra = [] if flag is None else [flag] if value is None else [flag, value]
        cases.append(command(script, folder, extra))
        results.append({"flag": flag, "value": value, "allowed": allowed, "out": folder / "out"})
    (tmp / "cases.json").write_text(json.dumps(cases))
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(driver), script, str(tmp / "cases.json"), str(tmp)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for i, (result, code) in enumerate(zip(results, json.loads((tmp / "codes.json").read_text()))):
        result.update(code=code, err=(tmp / f"{i}.err").read_text())
    return results


@pytest.mark.parametrize("script, table", [("train.py", TRAIN), ("generate.py", GENERATE), ("evaluate.py", EVALUATE)])
def test_every_impossible_flag_value_is_one_line_naming_the_flag_before_anything_loads(script, table, tmp_path):
    *bad, valid = run_cases(script, tmp_path, table)
    assert valid["code"] == 99, valid["err"][-3000:]  # a good command reaches the model load (the tripwire)
    wrong = []
    for case in bad:
        lines = case["err"].strip().splitlines()
        named = case["flag"] if case["flag"] != "--resume" else "--resume"
        if not (case["code"] == 2 and len(lines) == 1 and lines[0].startswith(f"{script}: error: ")
                and named in lines[0] and case["allowed"] in lines[0] and "Traceback" not in case["err"]
                and not case["out"].exists()):
            wrong.append(f"{case['flag']} {case['value']!r}: exit {case['code']}, out made: {case['out'].exists()}, "
                         f"stderr: {case['err'][-600:]!r}")
    assert not wrong, "\n".join(wrong)


def test_train_flag_error_gives_the_web_page_the_same_line_or_none(tmp_path):
    good = ["--ref", "me.jpg", "--model", "tiny", "--out", str(tmp_path / "run")]
    assert flags.train_flag_error(good) is None
    assert flags.train_flag_error(good + ["--beta", "-1"]) == "--beta must be > 0, or auto (got -1)"
    assert flags.train_flag_error(good + ["--rank", "two"]) == "argument --rank: invalid int value: 'two'"
    assert flags.train_flag_error(["--model", "tiny"]) == "the following arguments are required: --ref"
    assert "--resume" in flags.train_flag_error(good + ["--resume"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # what run.Run writes when a run begins
    assert flags.train_flag_error(good + ["--resume"]) is None
    assert not (tmp_path / "run" / "state.json").exists()
