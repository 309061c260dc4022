"""toyworld/identity_spread.py — does widening the identities' face geometry set people further apart under dlib?

Claim 2 needs an ID reward that tells "this person" from "someone" (toyworld/README.md, "Where this leaves claim 2").
This stretches every geometric feature of identities.identity about the middle of its range by a factor k,

    x' = m + k·(x − m),   m = the middle of x's range   (then clipped where a face would stop being drawable)

renders each identity in three head-and-shoulders videos (still, turning, smiling) at 128 px, embeds frame 1 of each
with the project's dlib encoder, and prints, per k: the frames where a face was found, the mean cosine of two frames
of the same identity and of two different ones (and the latter's 95th percentile), and the AUC of same over different.

    OMP_NUM_THREADS=1 python toyworld/identity_spread.py                 # k = 1, 1.6, 2.2; 12 identities; ~4 min

Exports: stretched, spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toyworld import identities, world as toy  # noqa: E402

def stretched(seed: int, k: float) -> dict:
    """identities.identity(seed), each identities.GEOMETRY feature k times as far from its range's middle."""
    look = identities.identity(seed)
    for key, (low, high) in identities.GEOMETRY.items():
        middle = (low + high) / 2
        look[key] = float(middle + k * (look[key] - middle))
    look["width"] = float(np.clip(look["width"], 0.5, 1.0))
    look["jaw"] = float(np.clip(look["jaw"], 0.0, 0.7))
    look["eye_open"], look["brow"] = max(look["eye_open"], 0.4), max(look["brow"], 0.015)
    return look


def spread(seeds: list[int], k: float, encoder) -> dict:
    world = toy.ToyWorld("cpu", seed=3)
    embeddings, owners = [], []
    for seed in seeds:
        videos, _, _ = identities.render_identity_videos([seed] * 3, world, 3, 128, ["still", "turns their head", "smiles"],
                                                         ["head-and-shoulders"] * 3, look_of=lambda s: stretched(s, k))
        for frame in toy.to_uint8(videos)[:, 1]:                               # [H, W, 3] each
            faces = encoder.find_faces(frame, thorough=True)
            if faces:
                embeddings.append(max(faces, key=lambda f: f.area).embedding)
                owners.append(seed)
    cosine, owner = np.stack(embeddings) @ np.stack(embeddings).T, np.array(owners)   # [N, N], [N]
    same = cosine[(owner[:, None] == owner[None]) & ~np.eye(len(owner), dtype=bool)]
    different = cosine[owner[:, None] != owner[None]]
    return {"k": k, "faces": len(owner), "frames": 3 * len(seeds), "same": float(same.mean()),
            "different": float(different.mean()), "different_p95": float(np.percentile(different, 95)),
            "auc": float((same[:, None] > different[None]).mean() + 0.5 * (same[:, None] == different[None]).mean())}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stretch", type=float, action="append", help="k (repeatable; default 1, 1.6, 2.2)")
    p.add_argument("--identities", type=int, default=12, help="held-out seeds from 1,000,600 on")
    args = p.parse_args(argv)
    from faces import DlibFaceEncoder

    encoder, seeds = DlibFaceEncoder(), list(range(1_000_600, 1_000_600 + args.identities))
    rows = [spread(seeds, k, encoder) for k in args.stretch or (1.0, 1.6, 2.2)]
    print("| k | faces found | same | different | different p95 | AUC |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']:g} | {r['faces']} of {r['frames']} | {r['same']:.3f} | {r['different']:.3f} | "
              f"{r['different_p95']:.3f} | {r['auc']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
