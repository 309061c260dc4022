"""flags.py — every flag's allowed values, checked in one place before anything loads.

A value that cannot work is refused here, in one line that names the flag and what it may be, before a model
loads and before --out is made. Unchecked, it fails late (--rank 0: a peft traceback once the model has loaded)
or, worse, quietly means something else: --beta -1 turns the preference around (toward the rejected videos),
--frames 0 reads as "the model's default", --identity-steps -5 as 0 steps, --resume of a mistyped --out starts
a new run from step 0.

    each flag:  value ∈ its allowed set      --beta > 0,  --rank ≥ 1,  --frames = 4k+1,  --jitter ∈ [0, 1), ...
    check_train_args(args), check_generate_args(args), check_evaluate_args(args)    raise FlagError: its str()
                                                                                    is the line the user sees
    parse_or_exit(prog, parse, check, argv)   each script's parse_args: "train.py: error: <the line>", exit 2
    train_flag_error(argv) -> str | None       the same for a caller that must not exit (the web page, app.py)

What only the loaded model knows (its block count for --checkpoint-blocks, a family's own size rule) is checked
once it has loaded (speedups.py, model.check_video_size); files (--ref, --prompts, --lora) where they are read.

Exports: FlagError, check_train_args, check_generate_args, check_evaluate_args, parse_or_exit, train_flag_error,
holds_run, SEED_STRIDE.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# evaluate.py's video seeds: seed + SEED_STRIDE·prompt + s, so more seeds per prompt than this would repeat
# the next prompt's videos.
SEED_STRIDE = 100


class FlagError(ValueError):
    """A flag's value cannot work; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Rule:
    allowed: str                     # completes "--flag must be ...": what the flag may take
    ok: Callable[[object], bool]


def _finite(test):
    return lambda value: math.isfinite(value) and test(value)  # nan and inf pass no comparison we mean


POSITIVE = Rule("> 0", _finite(lambda v: v > 0))
NON_NEGATIVE = Rule(">= 0", _finite(lambda v: v >= 0))
AT_LEAST_1 = Rule(">= 1", lambda v: v >= 1)
FINITE = Rule("a finite number", _finite(lambda v: True))
BELOW_1 = Rule("in [0, 1), a fraction of the side", _finite(lambda v: 0 <= v < 1))
BETA = Rule("> 0, or auto", lambda v: v == "auto" or POSITIVE.ok(v))
SEED = Rule(f"an integer from 0 to {2**32 - 1}", lambda v: 0 <= v < 2**32)
SEEDS = Rule(f"1 to {SEED_STRIDE}", lambda v: 1 <= v <= SEED_STRIDE)
# Wan's and CogVideoX's video VAEs compress time 4x after the first frame (model.py checks the same on load).
FRAMES = Rule("4k+1 (1, 5, 9, ..., 33, ..., 81), the frame counts the video VAEs make", lambda v: v >= 1 and v % 4 == 1)
SIDE = Rule("a positive multiple of 16 (pixels)", lambda v: v >= 16 and v % 16 == 0)

# flag -> rule; a flag left at None (a default decided later: the model's, the backend's) is not checked
VIDEO_SIZE = {"--frames": FRAMES, "--height": SIDE, "--width": SIDE}
TRAIN_RULES = {
    "--seed": SEED, "--identity-steps": NON_NEGATIVE, "--dpo-identity-steps": NON_NEGATIVE,
    "--dpo-dynamic-steps": NON_NEGATIVE, "--rounds": AT_LEAST_1, "--lr": POSITIVE, "--dpo-lr": POSITIVE,
    "--warmup": NON_NEGATIVE, "--rank": AT_LEAST_1, "--batch-size": AT_LEAST_1, "--checkpoint-every": AT_LEAST_1,
    "--checkpoint-blocks": NON_NEGATIVE, "--offload-blocks": NON_NEGATIVE, **VIDEO_SIZE,
    "--sample-steps": AT_LEAST_1, "--cfg-interval": AT_LEAST_1, "--static-videos": AT_LEAST_1,
    "--face-framing": NON_NEGATIVE, "--jitter": BELOW_1, "--num-prompts": AT_LEAST_1,
    "--videos-per-prompt": AT_LEAST_1, "--sem-floor": FINITE, "--delta-id": NON_NEGATIVE, "--tau-dyn": NON_NEGATIVE,
    "--dyn-margin": NON_NEGATIVE, "--dyn-id-tolerance": NON_NEGATIVE, "--max-pairs": AT_LEAST_1,
    "--max-uses": AT_LEAST_1, "--beta": BETA, "--sft-weight": NON_NEGATIVE, "--eval-prompts": AT_LEAST_1,
    "--eval-seeds": SEEDS,
}
GENERATE_RULES = {**VIDEO_SIZE, "--steps": AT_LEAST_1, "--guidance": NON_NEGATIVE, "--seed": SEED,
                  "--videos-per-prompt": AT_LEAST_1}
EVALUATE_RULES = {"--seeds": SEEDS, "--seed": SEED, **VIDEO_SIZE, "--steps": AT_LEAST_1, "--id-frames": AT_LEAST_1}


def check_train_args(args) -> None:
    """Raise FlagError for the first of train.py's flags whose value cannot work."""
    _check_rules(args, TRAIN_RULES)
    _check_model_flags(args)
    _check_token(args.token)
    _check_judge(args.judge)
    if args.sem_floor is not None and not args.judge:
        raise FlagError("--sem-floor needs a prompt judge: add --judge clip:DIR or --judge vlm:DIR")
    if args.offload_blocks and not args.grad_checkpointing:
        raise FlagError("--offload-blocks needs --grad-checkpointing (it offloads what checkpointing would recompute)")
    if args.cache:
        import fast_sampling

        try:
            fast_sampling.cache_config(args.cache)
        except ValueError as error:
            raise FlagError(f"--cache: {error}") from None
    if args.resume and not holds_run(args.out):
        raise FlagError(f"--resume needs an --out that holds a run, and {args.out} holds none (no config.json or "
                        "state.json): check --out, or leave out --resume to start a new run")


def check_generate_args(args) -> None:
    """Raise FlagError for the first of generate.py's flags whose value cannot work."""
    _check_rules(args, GENERATE_RULES)
    _check_model_flags(args)
    if args.token is not None:
        _check_token(args.token)


def check_evaluate_args(args) -> None:
    """Raise FlagError for the first of evaluate.py's flags whose value cannot work."""
    _check_rules(args, EVALUATE_RULES)
    _check_model_flags(args)
    _check_token(args.token)
    _check_judge(args.judge)


def parse_or_exit(prog: str, parse: Callable, check: Callable, argv: list[str] | None = None) -> argparse.Namespace:
    """parse(argv) (argparse's complaints raised, cli.ArgumentParser), then check(args); on a bad flag the one
    line "<prog>: error: ..." on stderr and exit 2, as argparse itself exits, before anything has loaded."""
    try:
        return _parsed_and_checked(parse, check, argv)
    except FlagError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def train_flag_error(argv: list[str]) -> str | None:
    """What train.py would say about this command line's flags (argv without "train.py"), or None if it would
    start: the web page (app.py) checks the command it built with it, so a bad value typed there gets this line."""
    from cli import parse_train_args  # cli.py imports the model code; callers of the checks alone need none

    try:
        _parsed_and_checked(parse_train_args, check_train_args, argv)
    except FlagError as error:
        return str(error)
    return None


def holds_run(out: str) -> bool:
    """Whether the folder holds a train.py run: run.Run writes config.json when the run begins, state.json at its
    first checkpoint (a run copied by toyworld/sweep.py has only the latter)."""
    return any((Path(out) / name).is_file() for name in ("config.json", "state.json"))


# ---- helpers ----------------------------------------------------------------------------------------

def _parsed_and_checked(parse, check, argv):
    try:
        args = parse(argv)
    except argparse.ArgumentError as error:  # an unknown flag, a wrong type, a missing --ref: argparse's words
        raise FlagError(str(error)) from None
    check(args)
    return args


def _check_rules(args, rules: dict[str, Rule]) -> None:
    for flag, rule in rules.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not rule.ok(value):
            shown = f"{value:g}" if isinstance(value, float) else value
            raise FlagError(f"{flag} must be {rule.allowed} (got {shown})")


def _check_model_flags(args) -> None:
    """cli.add_model_args' --device and --attention-backend: one this machine and diffusers have."""
    if args.device is not None:
        _check_device(args.device)
    backend = args.attention_backend
    if backend is not None and backend not in ("fa4", "sdpa"):
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = sorted(name.value for name in AttentionBackendName)
        if backend not in names:
            raise FlagError(f"--attention-backend must be fa4, sdpa or one of diffusers' {', '.join(names)} "
                            f"(got {backend})")


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise FlagError(f"--device must be cpu, cuda or cuda:N (got {device})") from None
    if kind.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise FlagError(f"--device must be cpu on this machine: torch finds no CUDA GPU here (got {device})")
    count = torch.cuda.device_count()
    if kind.index is not None and kind.index >= count:
        raise FlagError(f"--device must be cuda:0 to cuda:{count - 1} on this machine, which has {count} CUDA "
                        f"GPU(s) (got {device})")


def _check_token(token: str) -> None:
    if not token or token.split() != [token]:
        raise FlagError(f"--token must be one word, no spaces: it names the person in every prompt, 'a <token> "
                        f"person' (got {token!r})")


def _check_judge(judge: str | None) -> None:
    if judge is None:
        return
    kind, _, folder = judge.partition(":")
    if kind not in ("clip", "vlm") or not folder:
        raise FlagError(f"--judge must be clip:DIR or vlm:DIR, a local checkpoint folder (got {judge})")
    if not Path(folder).expanduser().is_dir():
        raise FlagError(f"--judge must be clip:DIR or vlm:DIR with DIR a local folder; {folder} is none")
