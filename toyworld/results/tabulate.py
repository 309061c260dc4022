"""toyworld/results/tabulate.py — the protocol's tables from finished runs' evaluation caches, no model needed.

A benchmark.py --protocol --ablations run on the GPU made this folder's first table; the change for claim 2
(two online rounds) was measured after it by two more protocol runs (--train-arg=--rounds=2, and with
--dpo-dynamic-steps=0), each in its own folder. This reads the three folders' held-out evaluations (each run's
eval/*.json: one row per model, prompt and seed), names the runs as benchmark.py --ablations now does, and
writes the tables benchmark.py would have written had the five runs been made by one call:

    python toyworld/results/tabulate.py MAIN_FOLDER --run "two rounds=R2_FOLDER" \
        --run "identity pairs only two rounds=R2ID_FOLDER" > toyworld/results/protocol-ablations.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
from toyworld import benchmark, protocol  # noqa: E402


def rows_of(run_dir: Path, identity: str) -> list[dict]:
    return [{**json.loads(path.read_text())["row"], "identity": identity} for path in sorted((run_dir / "eval").glob("*.json"))]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("main", type=Path, help="a benchmark.py --protocol [--ablations] --out folder")
    p.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER",
                   help="an ablation run (protocol.ABLATIONS name) whose main runs are in FOLDER")
    args = p.parse_args(argv)
    identities = [f"procedural_{s}" for s in protocol.load_protocol()["identities"]]
    folders = {"main": (args.main, "")}
    for name in [*protocol.ABLATIONS, "with judge"]:   # ablation runs made beside the main ones
        if (args.main / f"{identities[0]}__{protocol.run_slug(name)}").is_dir():
            folders[name] = (args.main, "__" + protocol.run_slug(name))
    for text in args.run:
        name, _, folder = text.partition("=")
        folders[name] = (Path(folder), "")
    summaries, paired = {}, {}
    for name, (folder, suffix) in folders.items():
        rows = [r for identity in identities for r in rows_of(folder / (identity + suffix), identity)]
        summaries[name] = evaluate.summarize(rows, list(benchmark.VARIANTS))
        paired[name] = {m: benchmark.paired_difference(rows, m) for m in benchmark.PAIRED_METRICS}
    judge = json.loads((args.main / "results.json").read_text()).get("judge")
    text = protocol.ablation_tables(summaries, judge, paired)
    print(text)
    return text


if __name__ == "__main__":
    main()
