"""Time-to-LoRA: how long `python train.py --ref me.jpg` takes at the GPU preset, stage by stage.

A full run at the published preset is hours of GPU time; its cost is a sum of units (videos, steps) that each
cost about the same. So we run a REDUCED train.py end to end, as a user would (a subprocess loading the dress
rehearsal's published-size Wan2.1-T2V-1.3B folder with `from_pretrained`), at the preset's video size and
sampling steps but with a few units of each stage, and extrapolate every stage to the preset's counts:

    per_unit = median over the stage's pieces of seconds / units        pieces: one step (log.jsonl), one
                                                                        repository batch, one evaluation video
    full     = measured + (N_full − n_reduced) · per_unit               what the reduced run spent beyond
                                                                        n · per_unit (compiling, warm-up) counts once

Model load, the text encoder, pairs, the report and the rest (startup, saving LoRAs) are counted once.
Candidate presets (--preset-arg "--sample-steps 10 --cfg-interval 2", repeatable) reuse the measured unit
costs when they change only counts (COUNT_FLAGS), and re-measure with a reduced run of their own otherwise.
What the reduced run cannot see: the preset samples K = --videos-per-prompt videos in one batch, the reduced
run one (a video costs the same: 32k-token GEMMs fill an H100 at batch 1, bench/NOTES.md: 0.523 vs 0.517 s per
video), so the batch-K graphs' compiling (~10-15 s each) is missing; and of the checkpoints every
--checkpoint-every steps (~1 s each) only each stage's last is in.

    python bench/time_to_lora.py --out runs/time_to_lora                    # GPU: build (or reuse) + one reduced run
    python bench/time_to_lora.py --out runs/time_to_lora --preset-arg "--videos-per-prompt 2" \\
        --preset-arg "--sample-steps 10 --cfg-interval 2"                   # + candidates
    python bench/time_to_lora.py --small --out /tmp/time_to_lora            # CPU check of the script, toy widths
    python bench/time_to_lora.py --backbone wan2.2-5b --out runs/time_to_lora-5b   # Wan2.2 (rehearsal.BACKBONES)

Exports: unit_cost, extrapolate_stage, full_units, stage_pieces, stage_table, main.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from published import environment, print_table  # noqa: E402
from rehearsal import BACKBONES  # noqa: E402

PHOTO = REPO / "examples" / "astronaut.jpg"
SMALL_SIZE = ["--frames", "9", "--height", "64", "--width", "64"]  # --small: rehearsal.py --small's video size
# A few units of every stage, at least three pieces each where compiling can hide in one: 4 identity steps,
# 2 prompts x 1 video x 2 sources in the repository, 3 + 3 DPO steps, 3 evaluation videos (1 prompt x 3 models).
REDUCED = ["--identity-steps", "4", "--dpo-identity-steps", "3", "--dpo-dynamic-steps", "3", "--num-prompts", "2",
           "--videos-per-prompt", "1", "--static-videos", "2", "--eval-prompts", "1", "--eval-seeds", "1",
           "--rounds", "1", "--tau-dyn", "1000", "--dyn-margin", "0"]  # random weights: open the pair rules
# train.py flags that change how many units a stage does, not what one costs
COUNT_FLAGS = {"identity_steps", "dpo_identity_steps", "dpo_dynamic_steps", "num_prompts", "videos_per_prompt",
               "static_videos", "eval_prompts", "eval_seeds", "rounds", "out"}
ONCE = ("model load", "text encoder", "pairs", "report", "other")  # stages counted once whatever the preset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/time_to_lora", help="folder for the model folder and the reduced runs")
    p.add_argument("--small", action="store_true", help="toy widths, 9x64x64 videos: a CPU check of the script")
    p.add_argument("--preset-arg", action="append", default=[],
                   help="a candidate preset: train.py flags over the GPU preset, in one string; repeatable")
    p.add_argument("--extra", default="", help="flags for every train.py run, measured and extrapolated alike")
    p.add_argument("--table", default=None, help="append the tables to this file")
    p.add_argument("--backbone", default="wan2.1-1.3b", choices=sorted(BACKBONES),
                   help="the published configs rehearsal.py builds (its folder inside --out)")
    args = p.parse_args(argv)

    print(environment(), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.small else "CPU"
    out = Path(args.out)
    folder = out / BACKBONES[args.backbone]["folder"]
    if not (folder / "model_index.json").exists():  # the rehearsal's build: 14.7 GB of random safetensors (1.3B)
        subprocess.run([sys.executable, str(REPO / "bench" / "rehearsal.py"), "--out", str(out), "--stages", "build",
                        "--backbone", args.backbone, *(["--small"] if args.small else [])], cwd=REPO, check=True)
    base = [*(SMALL_SIZE if args.small else []), *shlex.split(args.extra)]
    preset = train_args(folder, base)
    measured = {}  # the flags that change unit costs -> the reduced run that measured them
    totals = []
    for candidate in ["", *args.preset_arg]:
        flags = base + shlex.split(candidate)
        full = train_args(folder, flags)
        costs = tuple(sorted((k, str(v)) for k, v in vars(full).items()
                             if k not in COUNT_FLAGS and v != getattr(preset, k)))
        if costs not in measured:
            name = "run-" + ("preset" if not costs else "-".join(f"{k}={v}" for k, v in costs))
            measured[costs] = reduced_run(folder, out / re.sub(r"[^\w=.-]", "_", name), flags)
        run_dir, wall = measured[costs]
        rows, total, note = stage_table(stage_pieces(run_dir, wall), full_units(full))
        rows.append(["total", "", f"{wall:.0f}", "", "", f"{total:.0f} s = {total / 60:.1f} min{note}"])
        title = f"Time-to-LoRA, {'toy widths (--small)' if args.small else args.backbone + ' published size'}, {device}: " \
                f"train.py {candidate or 'at the GPU preset'} (measured in {run_dir.name})"
        print_table(title, ["stage", "units run", "measured s", "s / unit", "units full", "full s"], rows,
                    file=args.table)
        totals.append((candidate or "GPU preset", total, note))
    for name, total, note in totals:
        print(f"time-to-LoRA, {name}: {total / 60:.1f} min{note}")


def stage_table(pieces: dict[str, list[tuple[int, float]]], units: dict[str, int]) -> tuple[list[list], float, str]:
    """Rows [stage, units run, measured s, s / unit, units full, full s], the full total in seconds, and a note
    naming the stages the reduced run could not time (e.g. no pairs: no DPO step), left out of the total."""
    rows, total, unmeasured = [], 0.0, []
    for stage, parts in pieces.items():
        n, measured = sum(u for u, _ in parts), sum(s for _, s in parts)
        n_full = units.get(stage, n)
        if n == 0 and n_full > 0:
            unmeasured.append(stage)
            rows.append([stage, 0, f"{measured:.1f}", "not measured", n_full, "?"])
            continue
        seconds = extrapolate_stage(parts, n_full)
        total += seconds
        rows.append([stage, n, f"{measured:.1f}", f"{unit_cost(parts):.2f}", n_full, f"{seconds:.0f}"])
    return rows, total, f" + {', '.join(unmeasured)} (not measured)" if unmeasured else ""


def train_args(folder: Path, flags: list[str]) -> argparse.Namespace:
    """train.py's settings for these flags over the published preset (its own parser: the preset's source)."""
    import train

    return train.parse_args(["--ref", str(PHOTO), "--model", str(folder), *flags])


def reduced_run(folder: Path, run_dir: Path, flags: list[str]) -> tuple[Path, float]:
    """train.py end to end with the REDUCED counts after `flags` (the later flag wins); (run folder, wall s).
    A finished run of the same command is reused; anything else in run_dir is replaced (timings of one start)."""
    command = [sys.executable, "train.py", "--ref", str(PHOTO), "--model", str(folder.resolve()),
               "--out", str(run_dir.resolve()), "--id-backend", "dlib", *flags, *REDUCED]
    done = json.loads((run_dir / "wall.json").read_text()) if (run_dir / "wall.json").exists() else {}
    if done.get("command") == command:
        print(f"reusing the finished reduced run in {run_dir}", flush=True)
        return run_dir, done["seconds"]
    shutil.rmtree(run_dir, ignore_errors=True)
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    (run_dir / "wall.json").write_text(json.dumps({"seconds": wall, "command": command}))
    return run_dir, wall


def stage_pieces(run_dir: Path, wall: float) -> dict[str, list[tuple[int, float]]]:
    """Each stage's measured pieces [(units, seconds)], summing to its seconds, from the run's files:
    timings.json (rows per stage), log.jsonl (each training step), eval/*.json (written as each video ends).
    Training stages lose their round suffix; "other" is the wall time no stage holds (startup, saving)."""
    rows = json.loads((run_dir / "timings.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    pieces: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        stage = re.sub(r"_round\d+$", "", row["stage"])
        step_seconds = [r["seconds"] for r in steps if r["stage"] == row["stage"] and "seconds" in r]
        if step_seconds:  # one piece a step, and the stage's own overhead (optimizer, last checkpoint) as one more
            parts = [(1, s) for s in step_seconds] + [(0, row["seconds"] - sum(step_seconds))]
        elif stage == "evaluation videos":
            ends = sorted(f.stat().st_mtime for f in (run_dir / "eval").glob("*_p*_s*.json"))
            marks = [row["started"], *ends]
            parts = [(1, b - a) for a, b in zip(marks, marks[1:])] + [(0, row["started"] + row["seconds"] - marks[-1])]
        else:
            parts = [(row["units"], row["seconds"])]
        pieces.setdefault(stage, []).extend(parts)
    pieces["other"] = [(1, wall - sum(row["seconds"] for row in rows))]
    return pieces


def unit_cost(pieces: list[tuple[int, float]]) -> float:
    """Seconds a unit costs: the median of seconds / units over the pieces that did units (0 if none did).
    A median, so a piece that also compiled (the first step, the first video of a new shape) does not count."""
    rates = [seconds / units for units, seconds in pieces if units > 0]
    return statistics.median(rates) if rates else 0.0


def extrapolate_stage(pieces: list[tuple[int, float]], n_full: int) -> float:
    """The stage's seconds at n_full units: what it measured, plus (n_full − n) units at unit_cost. What it spent
    beyond n · unit_cost (compiling, warm-up, a last checkpoint) is counted once, not once per unit."""
    n = sum(units for units, _ in pieces)
    return sum(seconds for _, seconds in pieces) + (n_full - n) * unit_cost(pieces)


def full_units(args: argparse.Namespace) -> dict[str, int]:
    """Units each stage does in a train.py run with these settings (train.py's own loops, counted)."""
    repository = (2 + args.rounds - 1) * args.num_prompts * args.videos_per_prompt  # round 0: initial + finetuned
    units = {"static videos": args.static_videos, "identity": args.identity_steps,
             "repository videos": repository, "repository scoring": repository,
             "dpo_identity": args.rounds * args.dpo_identity_steps, "dpo_dynamic": args.rounds * args.dpo_dynamic_steps,
             "evaluation videos": 3 * args.eval_prompts * args.eval_seeds}  # base, identity stage, MagicID
    return units | {stage: 1 for stage in ONCE}


if __name__ == "__main__":
    main()
