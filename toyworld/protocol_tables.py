"""toyworld/protocol_tables.py — the protocol's tables and paired differences from finished runs, without the model.

benchmark.py --protocol [--ablations] prints its tables when every run is made in one call. Runs made by separate
calls (on the device: the two-round rows of Table 2 came after the first call's three runs) are put together here
from each run's own evaluation caches (eval/*.json at 9 frames, eval_17f/*.json at 17: one row per model, prompt
and seed, as a finished run wrote them; nothing is recomputed, so give folders of finished runs only):

    python toyworld/protocol_tables.py MAIN [--run "NAME=FOLDER" ...] > toyworld/results/protocol-paired-h100.md

MAIN is a benchmark.py --out folder (its ablation runs beside the main ones are found by name); each --run adds an
ablation run (a protocol.ABLATIONS name) whose main runs are in FOLDER. Printed: Tables 2 and 3 (protocol.py), and
what they rest on — MagicID − identity stage paired (claims.py) per run at 9 and 17 frames and per identity, the
runs' MagicIDs against each other (e.g. the dynamic pairs' own share: MagicID − identity pairs only), identity
fading per video, and each round's pairs and β.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toyworld import claims, protocol  # noqa: E402

VARIANTS = ["base", "identity stage", "MagicID"]
# Runs compared with each other, MagicID to MagicID on the same videos: (what it measures, run, against run).
CROSS = [("dynamic pairs, one round", "main", "identity pairs only"),
         ("dynamic pairs, two rounds", "two rounds", "identity pairs only two rounds"),
         ("a second round", "two rounds", "main")]


def cached_rows(run_dir: Path, cache: str, identity: str) -> list[dict]:
    """The rows a finished run's evaluation cached in run_dir/cache (one JSON file per model, prompt and seed)."""
    return [{**json.loads(path.read_text())["row"], "identity": identity}
            for path in sorted((run_dir / cache).glob("*.json"))]


def interval(ci) -> str:
    return "—" if ci is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*ci)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("main", type=Path, help="a benchmark.py --protocol [--ablations] --out folder")
    p.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER",
                   help="an ablation run (protocol.ABLATIONS name) whose main runs are in FOLDER")
    args = p.parse_args(argv)
    identities = [f"procedural_{s}" for s in protocol.load_protocol()["identities"]]
    folders = {"main": {i: protocol.run_folder(args.main, i) for i in identities}}
    for name in [*protocol.ABLATIONS, "with judge"]:   # made beside the main runs by --ablations
        if protocol.run_folder(args.main, identities[0], name).is_dir():
            folders[name] = {i: protocol.run_folder(args.main, i, name) for i in identities}
    for text in args.run:
        name, _, folder = text.partition("=")
        folders[name] = {i: protocol.run_folder(Path(folder), i) for i in identities}

    rows = {name: [r for i, d in dirs.items() for r in cached_rows(d, "eval", i)] for name, dirs in folders.items()}
    statistics = {name: claims.run_statistics(rows[name], VARIANTS) for name in rows}
    judge = json.loads((args.main / "results.json").read_text()).get("judge")
    lines = [protocol.ablation_tables({n: s[0] for n, s in statistics.items()}, judge,
                                      {n: s[1] for n, s in statistics.items()}), ""]

    lines += ["## MagicID − identity stage, paired by identity × prompt × seed: mean [95 % CI]", "",
              "| run | frames | " + " | ".join(f"Δ{m}" for m in claims.PAIRED_METRICS) + " | identity fade, per video |",
              "|---|---|---|---|---|"]
    for name, dirs in folders.items():
        long = [r for i, d in dirs.items() for r in cached_rows(d, "eval_17f", i)]
        for frames, these in (("9", rows[name]), ("17", long)):
            if these:
                paired = claims.run_statistics(these, VARIANTS)[1]
                fade = claims.identity_fade(these) if frames == "17" else None
                lines.append(f"| {name} | {frames} | " + " | ".join(interval(paired[m]) for m in claims.PAIRED_METRICS)
                             + f" | {interval(fade) if fade else ''} |")

    lines += ["", "## Per identity, 9 frames: MagicID − identity stage (Δr_id / Δr_dyn, means)", "",
              "| run | " + " | ".join(identities) + " |", "|---" * (len(identities) + 1) + "|"]
    for name in rows:
        cells = []
        for identity in identities:
            mine = [r for r in rows[name] if r["identity"] == identity]
            cells.append(" / ".join(f"{claims.paired_difference(mine, m)[0]:+.3f}" for m in claims.PAIRED_METRICS))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "## Runs against each other: MagicID − MagicID on the same videos, 9 frames", "",
              "| what | runs | " + " | ".join(f"Δ{m}" for m in claims.PAIRED_METRICS) + " |", "|---|---|---|---|"]
    for what, run, other in CROSS:
        if run in rows and other in rows:
            both = [{**r, "variant": run} for r in rows[run] if r["variant"] == "MagicID"]
            both += [{**r, "variant": other} for r in rows[other] if r["variant"] == "MagicID"]
            cells = [interval(claims.paired_difference(both, m, baseline=other, variant=run))
                     for m in claims.PAIRED_METRICS]
            lines.append(f"| {what} | {run} − {other} | " + " | ".join(cells) + " |")

    lines += ["", "## Pairs and β per round (identity / dynamic pairs; β from --beta auto)", "",
              "| run | round | " + " | ".join(identities) + " |", "|---" * (len(identities) + 2) + "|"]
    for name, dirs in folders.items():
        for round_file in sorted(dirs[identities[0]].glob("pairs_round*.json")):
            cells = []
            for identity in identities:
                summary = json.loads((dirs[identity] / round_file.name).read_text())["summary"]
                beta_file = dirs[identity] / round_file.name.replace("pairs", "beta")
                beta = json.loads(beta_file.read_text()).get("beta") if beta_file.exists() else None
                cells.append(f"{summary['identity']['pairs']} / {summary['dynamic']['pairs']}"
                             + (f", β {beta:.3g}" if beta else ""))
            lines.append(f"| {name} | {round_file.stem[-1]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
