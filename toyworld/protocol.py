"""toyworld/protocol.py — the population benchmark's fixed protocol, its procedural users, its ablation tables.

The protocol (toyworld/heldout_protocol.json) was written before the population base existed: which held-out
identities (seeds ≥ 1,000,000, never in pretraining), which repository and held-out prompts, how many seeds,
which model. benchmark.py reads it and never changes it.

A procedural identity comes to train.py as a user would bring it: K reference stills (identities.reference_stills:
varied head pose and expression) written as PNGs in the run folder, kept only where the ID reward's detector
finds the face (a user picks photos that show it), and passed as --ref <folder>.

The ablations, in the paper's form, from train.py runs that differ in one setting (benchmark.py --ablations):
  Table 2 (pairs)    none = the identity stage (self-reconstruction) | identity = DPO on identity pairs only
                     (--dpo-dynamic-steps 0) | identity + dynamic = MagicID; and the change for claim 2 (ours):
                     both again with a second online round (--rounds 2: the repository resampled from the
                     model after round 1, new pairs, DPO again), so its gain splits into "more identity DPO"
                     and "the dynamic pairs"
  Table 3 (rewards)  ID = identity pairs only (r_id alone chooses them) | + dynamic = MagicID (hybrid pairs:
                     r_id and r_dyn) | + semantic = MagicID with a prompt judge (--judge; missing without one)
Each row also gives its difference to the identity stage paired by identity × prompt × seed (claims.py's
paired_difference), the interval that sees the small effects of this world.

Exports: PROTOCOL_FILE, ABLATIONS, load_protocol, write_procedural_references, run_folder, ablation_tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from toyworld.claims import PAIRED_METRICS
from toyworld.identities import HELDOUT_FROM, reference_stills

PROTOCOL_FILE = Path(__file__).resolve().parent / "heldout_protocol.json"
# name -> extra train.py flags of that run (besides the protocol's); MagicID itself is the main run.
ABLATIONS = {"identity pairs only": ["--dpo-dynamic-steps", "0"],
             "two rounds": ["--rounds", "2"],                                              # ours
             "identity pairs only two rounds": ["--rounds", "2", "--dpo-dynamic-steps", "0"]}  # ours
TABLE_COLUMNS = ("r_id", "face_hit_rate", "r_dyn", "dynamic_degree")


def load_protocol(path: Path = PROTOCOL_FILE) -> dict:
    """The protocol, its prompt files as absolute paths; one clear line for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"protocol file {path} not found")
    protocol = json.loads(path.read_text())
    for key in ("train_prompts", "heldout_prompts"):
        protocol[key] = str((path.parent / protocol[key]).resolve())
        if not Path(protocol[key]).is_file():
            raise SystemExit(f"{path}: {key} {protocol[key]} not found")
    low = [s for s in protocol["identities"] if s < HELDOUT_FROM]
    if low:
        raise SystemExit(f"{path}: identities {low} are below {HELDOUT_FROM:,}, so pretraining may have shown them")
    return protocol


def write_procedural_references(seed: int, folder: Path, stills: int, encoder) -> Path:
    """<folder>/procedural_<seed>/still_<i>.png: K stills of held-out identity `seed` whose face `encoder`
    finds (as load_references will look for it). Written once; the same seed always gives the same stills."""
    if seed < HELDOUT_FROM:
        raise SystemExit(f"--procedural {seed}: give a held-out identity seed >= {HELDOUT_FROM:,} (lower seeds "
                         f"may appear in the base's pretraining)")
    from PIL import Image

    own = Path(folder) / f"procedural_{seed}"
    if len(list(own.glob("still_*.png"))) < stills:
        own.mkdir(parents=True, exist_ok=True)
        accept = lambda image: bool(encoder.find_faces(image, thorough=True))  # noqa: E731
        for i, still in enumerate(reference_stills(seed, stills, accept=accept)):
            Image.fromarray(still).save(own / f"still_{i}.png")
    return own


def run_folder(out: Path, identity: str, run: str = "main") -> Path:
    """Where benchmark.py puts `identity`'s run of `run` (an ABLATIONS name, "with judge" or "main"):
    out/procedural_1000003, out/procedural_1000003__identity_pairs_only, ..."""
    slug = re.sub(r"[^a-z0-9]+", "_", run.lower()).strip("_")
    return Path(out) / (identity.replace("/", "_") + ("" if run == "main" else "__" + slug))


def ablation_tables(summaries: dict[str, dict], judge: str | None, paired: dict[str, dict] | None = None) -> str:
    """Tables 2 and 3 from summaries {"main": evaluate.summarize(...) of base / identity stage / MagicID,
    <ABLATIONS name>: the same of that run, "with judge": MagicID with --judge (or absent)} and, per run,
    paired {metric: (mean, low, high)} of its MagicID − identity stage (claims.run_statistics)."""
    paired = paired or {}
    main = summaries["main"]

    def row(name, run):   # (label, that run's MagicID metrics, its paired Δ); run None: the identity stage
        if run is None:
            return name, main.get("identity stage"), None
        return name, summaries.get(run, {}).get("MagicID"), paired.get(run)

    rows2 = [row("none (identity stage)", None), row("identity", "identity pairs only"),
             row("identity + dynamic (MagicID)", "main"),
             row("identity, 2 online rounds (ours)", "identity pairs only two rounds"),
             row("identity + dynamic, 2 online rounds (ours)", "two rounds")]
    rows3 = [row("ID", "identity pairs only"), row("ID + dynamic", "main"), row("ID + dynamic + semantic", "with judge")]
    missing3 = "" if judge else " (+ semantic: missing: no toy-world prompt judge was given, --judge)"
    header = list(TABLE_COLUMNS) + [f"Δ{m} paired" for m in PAIRED_METRICS]
    lines = []
    for title, rows in (("Table 2: preference pairs", rows2), ("Table 3: rewards" + missing3, rows3)):
        lines += [f"## {title} (held-out prompts, 9 frames; mean [95 % CI]; Δ: minus the identity stage, "
                  f"paired by identity × prompt × seed)", "",
                  "| row | n | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
        for name, metrics, delta in rows:
            if metrics is None:
                lines.append(f"| {name} | — | " + " | ".join("not run" for _ in header) + " |")
                continue
            cells = [f"{metrics[m][0]:.3f} [{metrics[m][1]:.3f}, {metrics[m][2]:.3f}]" for m in TABLE_COLUMNS]
            cells += ["{:+.3f} [{:+.3f}, {:+.3f}]".format(*delta[m]) if delta and delta.get(m) else "—"
                      for m in PAIRED_METRICS]
            lines.append(f"| {name} | {metrics['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
