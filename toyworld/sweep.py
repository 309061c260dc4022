"""toyworld/sweep.py — claim 2's levers side by side: many train.py settings on one identity stage, N at a time.

MagicID's levers for restoring motion (K videos per prompt, online rounds, τ_dyn, the number of dynamic
pairs, β and the DPO lr, an SFT term on winners) all act after the identity stage, so every setting can
start from one finished benchmark run, the *seed run* (toyworld/benchmark.py). Each configuration gets a
copy of the seed's
    identity stage   checkpoint and LoRA (the same steps: nothing before the repository changes),
    repository       its videos (seeds 0..K-1 per prompt: a larger K only adds seeds K.., a later round
                     adds its own), and
    evaluation       the base's and the identity stage's held-out videos (same model, prompts, seeds),
and runs the rest (repository additions, pairs, DPO, MagicID's evaluation) through benchmark.py, without
the 17-frame identity curve (--no-curve: the levers are about motion). A flag that would change what is
copied (the identity stage, the video size, the held-out set) is refused. toyworld/README.md, "Claim 2's
levers", has the sweep this made and the command for a GPU.

    python toyworld/sweep.py --seed-run runs/tw_seed --out runs/tw_sweep --jobs 2 \\
        k8=--videos-per-prompt=8 "sft10=--sft-weight=10 --tau-dyn=1" rounds2=--rounds=2

A missing seed run is made first (benchmark.py --no-curve on --device). Each configuration's log is
<out>/<name>/benchmark.log; the table of all of them, against the seed, goes to <out>/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from toyworld import benchmark  # noqa: E402

# train.py settings that make the copied parts: a configuration must leave them as the seed run had them.
COPIED = ("seed", "token", "model", "identity_steps", "lr", "warmup", "rank", "lora_targets", "batch_size",
          "frames", "height", "width", "sample_steps", "static_videos", "face_framing", "jitter", "id_backend",
          "num_prompts", "eval_prompts", "eval_seeds", "bf16")
EVAL_DIRS = ("eval", f"eval_{benchmark.LONG_FRAMES}f", "eval_people")   # benchmark.evaluate_run's caches
REUSED_VARIANTS = ("base", "identity stage")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", metavar="NAME=FLAGS",
                   help='a configuration: its name and its extra train.py flags, e.g. "sft10=--sft-weight=10" '
                        '(none: only make the seed run)')
    p.add_argument("--seed-run", required=True, help="a toyworld/benchmark.py --out folder (made if missing)")
    p.add_argument("--identity", action="append", choices=benchmark.IDENTITIES,
                   help="shipped identities (default: astronaut)")
    p.add_argument("--procedural", action="append", default=[], type=int, metavar="SEED",
                   help="held-out procedural identities instead (benchmark.py --procedural; the protocol's setup)")
    p.add_argument("--out", default=str(ROOT / "runs" / "tw_sweep"), help="one folder per configuration in here")
    p.add_argument("--jobs", type=int, default=2, help="configurations run at once")
    p.add_argument("--device", default="cpu", help="train.py's and the evaluation's device: cpu or cuda")
    p.add_argument("--no-base-check", action="store_true",
                   help="skip toyworld/base_check.py's figures (they need dlib: a GPU machine may lack it)")
    args = p.parse_args(argv)
    if args.procedural and args.identity:
        raise SystemExit("sweep.py: error: --procedural and --identity: one kind of identity per sweep")
    identities = [f"procedural_{s}" for s in args.procedural] or args.identity or ["astronaut"]
    setup = benchmark.population_setup(benchmark.population.PROTOCOL_FILE, None) if args.procedural else benchmark.PHOTO_SETUP
    configs = dict(parse_config(text) for text in args.configs)
    seed, out = Path(args.seed_run), Path(args.out)
    common = [sys.executable, str(ROOT / "toyworld" / "benchmark.py"), "--device", args.device,
              *(f"--procedural={s}" for s in args.procedural),
              *(f"--identity={name}" for name in ([] if args.procedural else identities)),
              *(["--no-base-check"] if args.no_base_check else [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
           or str(max(1, (os.cpu_count() or 1) // args.jobs))}   # N processes must not each take every core

    if not (seed / "results.json").exists():
        print(f"making the seed run in {seed}", flush=True)
        seed.mkdir(parents=True, exist_ok=True)
        with open(seed / "benchmark.log", "a") as log:
            subprocess.run([*common, "--no-curve", "--out", str(seed)], env=env, stdout=log, stderr=subprocess.STDOUT,
                           check=True)
    for name, flags in configs.items():
        check_reusable(seed, identities, flags, setup)
        for identity in identities:
            copy_seed(seed, out / name, identity)

    waiting, running, started = list(configs.items()), {}, time.time()
    while waiting or running:
        while waiting and len(running) < args.jobs:
            name, flags = waiting.pop(0)
            log = open(out / name / "benchmark.log", "a")
            command = [*common, "--no-curve", "--out", str(out / name), *(f"--train-arg={f}" for f in flags)]
            running[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"[{time.time() - started:5.0f} s] started {name}: {shlex.join(flags)}", flush=True)
        time.sleep(5)
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[name]
                print(f"[{time.time() - started:5.0f} s] {name} ended (exit {process.returncode}); "
                      f"log {out / name / 'benchmark.log'}", flush=True)
    text = table(seed, out, configs, identities)
    (out / "sweep.md").write_text(text)
    print(text)
    return text


def parse_config(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition("=")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"configuration {text!r}: write NAME=FLAGS with a plain NAME (letters, digits, - or _)")
    return name, shlex.split(flags)


def check_reusable(seed: Path, identities: list[str], flags: list[str], setup: dict = benchmark.PHOTO_SETUP) -> None:
    """Refuse flags that would make the copied identity stage, repository or evaluation another run's."""
    for identity in identities:
        before = json.loads((seed / identity / "config.json").read_text())
        after = vars(train.parse_args(benchmark.train_argv(Path("x"), Path("x"), flags, setup=setup)))
        changed = [key for key in COPIED if before.get(key) != after.get(key)
                   and not (key == "bf16" and after.get(key) is None)]   # None: the device's default
        if changed:
            raise SystemExit(f"{shlex.join(flags)}: changes {changed}, which the seed run "
                             f"{seed} fixed; make a new seed run with them (toyworld/benchmark.py --train-arg=...)")


def copy_seed(seed: Path, folder: Path, identity: str) -> None:
    """The seed's identity stage, repository and base / identity-stage evaluation, as a run to --resume."""
    source, target = seed / identity, folder / identity
    if (target / "state.json").exists():
        return  # copied before: a repeated sweep resumes its configurations
    target.mkdir(parents=True)
    for name in ("refs", "base_check.json"):
        if not (folder / name).exists() and (seed / name).exists():   # base_check.json: not with --no-base-check
            copy = shutil.copytree if (seed / name).is_dir() else shutil.copy2
            copy(seed / name, folder / name)
    shutil.copytree(source / "repository", target / "repository")
    shutil.copytree(source / "identity_lora", target / "identity_lora")
    shutil.copytree(source / "checkpoints" / "identity", target / "checkpoints" / "identity")
    state = json.loads((source / "state.json").read_text())
    (target / "state.json").write_text(json.dumps(
        {"done": ["identity"], "latest": {"identity": state["latest"]["identity"]}}, indent=1))
    lines = (source / "log.jsonl").read_text().splitlines()
    (target / "log.jsonl").write_text("".join(line + "\n" for line in lines if '"stage": "identity"' in line))
    # The evaluation caches name the reference photos by their paths (refs/<identity>.png, or the stills in
    # refs/<identity>/ of a procedural identity); the copies in folder/refs are the same photos.
    old_refs, new_refs = str(seed / "refs"), str(folder / "refs")
    slugs = tuple(variant.replace(" ", "_") + "_" for variant in REUSED_VARIANTS)
    for cache in EVAL_DIRS:
        (target / cache).mkdir()
        for path in (source / cache).glob("*.json"):
            if path.name.startswith(slugs):
                cached = json.loads(path.read_text())
                cached["key"]["references"] = [new_refs + r[len(old_refs):] if r.startswith(old_refs + os.sep) else r
                                               for r in cached["key"]["references"]]
                (target / cache / path.name).write_text(json.dumps(cached))
                if path.with_suffix(".png").exists():   # the contact sheet train.py's report shows
                    shutil.copy2(path.with_suffix(".png"), target / cache / path.with_suffix(".png").name)


def table(seed: Path, out: Path, configs: dict, identities: list[str]) -> str:
    """Seed and configurations: pairs, the DPO's last tenth, and the held-out r_id / r_dyn of MagicID."""
    lines = [f"# Sweep over {', '.join(identities)} (seed run {seed})", "",
             "held-out 9 frames and person-motion prompts: mean [95 % CI]; pairs of the last round; DPO: implicit "
             "accuracy and reward margin over the last tenth of the dynamic phase (of the last round)", "",
             "| config | flags | pairs id / dyn | DPO dyn acc / margin | r_id | r_dyn | r_dyn people | r_id people |",
             "|---|---|---|---|---|---|---|---|"]
    for name, folder, flags in [("seed", seed, [])] + [(n, out / n, f) for n, f in configs.items()]:
        results = folder / "results.json"
        if not results.exists():
            lines.append(f"| {name} | {shlex.join(flags)} | failed: see {folder / 'benchmark.log'} | | | | | |")
            continue
        r = json.loads(results.read_text())
        cell = lambda table, variant, metric: ("{:.3f} [{:.3f}, {:.3f}]".format(*r[table][variant][metric])
                                               if r.get(table) else "—")   # no person-motion prompts (procedural)
        variants = ["identity stage", "MagicID"] if name == "seed" else ["MagicID"]
        for variant in variants:
            label = f"{name} {variant}" if name == "seed" else name
            trained = ([pair_counts(folder, identities), last_tenth(folder, identities)]
                       if variant == "MagicID" else ["", ""])
            lines.append(f"| {label} | {shlex.join(flags)} | {trained[0]} | {trained[1]} | "
                         f"{cell('table_9', variant, 'r_id')} | {cell('table_9', variant, 'r_dyn')} | "
                         f"{cell('table_people', variant, 'r_dyn')} | {cell('table_people', variant, 'r_id')} |")
    return "\n".join(lines) + "\n"


def pair_counts(folder: Path, identities: list[str]) -> str:
    counts = []
    for identity in identities:
        rounds = sorted((folder / identity).glob("pairs_round*.json"))
        if rounds:
            s = json.loads(rounds[-1].read_text())["summary"]
            counts.append(f"{s['identity']['pairs']} / {s['dynamic']['pairs']}")
    return ", ".join(counts)


def last_tenth(folder: Path, identities: list[str]) -> str:
    cells = []
    for identity in identities:
        records = [json.loads(line) for line in (folder / identity / "log.jsonl").read_text().splitlines()]
        stages = sorted({r["stage"] for r in records if r["stage"].startswith("dpo_dynamic")})
        steps = [r for r in records if stages and r["stage"] == stages[-1]]
        tail = steps[-max(1, len(steps) // 10):]
        if tail:
            cells.append("{:.2f} / {:.2f}".format(sum(r["implicit_accuracy"] for r in tail) / len(tail),
                                                  sum(r["reward_margin"] for r in tail) / len(tail)))
    return ", ".join(cells)


if __name__ == "__main__":
    main()
