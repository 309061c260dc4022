"""toyworld/judge_check.py — does the toy prompt judge judge? Matched against mismatched captions, on held-out data.

A prompt judge is useful to MagicID when it scores a video higher with its own prompt than with a prompt that
differs in one thing. For each check video v with its caption c and a caption c' that changes one thing,

    accuracy = P( r_sem(v, c) > r_sem(v, c') ),       r_sem = the judge's score (judges.py, as train.py uses it)

per kind of change:
  hair colour       "a blond person nods, camera still"  vs  "a red-haired person nods, camera still"
  glasses, hat      with and without " with glasses" / " in a hat" (half the people wear it: both directions)
  scene             "a cat, camera pans left"  vs  "a rocket, camera pans left"
  person or scene   "a person, camera zooms in"  vs  "a clock, camera zooms in"
  motion            "a person nods, camera still"  vs  "a person waves, camera still": a single frame shows no
                    motion, so a per-frame judge (CLIP-T too) is expected near chance here
People are HELD-OUT identities (seeds from CHECK_SEEDS_FROM ≥ 1,000,000: the judge's training refuses them),
with glasses and hats set by the check; everything else (pose, light, clothes, background, camera) comes from
a world seed the training never used (training: 0).

    OMP_NUM_THREADS=1 python toyworld/judge_check.py                       # weights/toyworld-judge, ~2 min

Exports: CHECK_SEEDS_FROM, CHECK_WORLD_SEED, KINDS, check_videos, accuracy, main.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root

from toyworld import identities, people, world as toy  # noqa: E402

CHECK_SEEDS_FROM = identities.HELDOUT_FROM + 500_000   # held-out identities, apart from the protocol's (1,000,xxx)
CHECK_WORLD_SEED = 777                                 # nuisance and scenes; the judge trained on world seed 0
KINDS = ("hair colour", "glasses", "hat", "scene", "person or scene", "motion")
ATTRIBUTES = ("hair colour", "glasses", "hat")
SUBJECTS = (*toy.NATURAL_IMAGES.values(), *toy.PROCEDURAL)


def main(argv=None) -> dict:
    import judges

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", default=str(ROOT / "weights" / "toyworld-judge"), help="a CLIP judge folder")
    p.add_argument("--videos", type=int, default=64, help="check videos per kind")
    p.add_argument("--frames", type=int, default=9, help="frames per video (the judge averages 8 of them)")
    p.add_argument("--size", type=int, default=128, help="video side, px")
    p.add_argument("--world-seed", type=int, default=CHECK_WORLD_SEED, help="the check's world seed")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    judge = judges.load_judge(f"clip:{args.judge}")
    result = accuracy(judge, check_videos(args.videos, args.frames, args.size, args.world_seed))
    result["command"] = "python toyworld/judge_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def check_videos(n: int, frames: int = 9, size: int = 128, world_seed: int = CHECK_WORLD_SEED,
                 kinds=KINDS) -> list[tuple[str, np.ndarray, str, str]]:
    """n check videos per kind -> (kind, video uint8 [F, H, W, 3], matched caption, mismatched caption).
    Deterministic: the same arguments give the same videos and captions."""
    world = toy.ToyWorld("cpu", seed=world_seed)
    r = world.rng
    checks = []
    for kind in kinds:
        if kind == "scene":
            videos, captions, _ = world.batch(n, frames, size)                     # no people: people_share 0
            for video, text in zip(toy.to_uint8(videos), captions):
                subject = max((s for s in SUBJECTS if s in text), key=len)
                other = r.choice([s for s in SUBJECTS if s != subject])
                checks.append((kind, video, text, text.replace(subject, other)))
            continue
        seeds = [s for s in range(CHECK_SEEDS_FROM, CHECK_SEEDS_FROM + 4 * n)
                 if kind != "hair colour" or identities.identity(s)["hair_style"] != "bald"][:n]
        worn = {s: i % 2 == 0 for i, s in enumerate(seeds)}                          # half wear the glasses / hat
        look_of = lambda s: {**identities.identity(s), "glasses": kind == "glasses" and worn[s],  # noqa: E731
                             "hat": kind == "hat" and worn[s],
                             "hat_color": np.random.default_rng(s).uniform(0.05, 0.9, 3)}
        videos, _, motions = identities.render_identity_videos(seeds, world, frames, size, look_of=look_of)
        for seed, video, motion in zip(seeds, toy.to_uint8(videos), motions):
            checks.append((kind, video, *_caption_pair(kind, identities.identity(seed), worn[seed], motion, r)))
    return checks


def accuracy(judge, checks) -> dict:
    """Per kind: the share of check videos whose matched caption scores above the mismatched one, the
    number of videos, and the mean margin r_sem(v, c) − r_sem(v, c'); 'attributes' pools hair, glasses, hat."""
    wins = {}
    for kind, video, matched, mismatched in checks:
        margin = (judge.score(video, matched, judge.num_frames).reward
                  - judge.score(video, mismatched, judge.num_frames).reward)
        wins.setdefault(kind, []).append(margin)
    wins["attributes"] = [m for kind in ATTRIBUTES for m in wins.get(kind, [])]
    return {"judge": judge.name, **{kind: {"accuracy": float(np.mean(np.asarray(m) > 0)), "videos": len(m),
                                           "mean_margin": float(np.mean(m))} for kind, m in wins.items() if m}}


def _caption_pair(kind: str, look: dict, worn: bool, motion: str, r) -> tuple[str, str]:
    """The video's caption and the one with one thing changed, in the world's caption grammar."""
    wrong_motion = motion
    if kind == "hair colour":
        other = r.choice([h for h in people.HAIR if h != look["hair_name"]])
        right, wrong = f"a {look['hair_name']} person", f"a {other} person"
    elif kind in ("glasses", "hat"):
        with_it = "a person " + ("with glasses" if kind == "glasses" else "in a hat")
        right, wrong = (with_it, "a person") if worn else ("a person", with_it)
    elif kind == "person or scene":
        right, wrong = "a person", str(r.choice(SUBJECTS))
    else:  # motion
        right = wrong = "a person"
        wrong_motion = r.choice([m for m in identities.IDENTITY_MOTIONS if m != motion])
    return _caption(right, motion), _caption(wrong, wrong_motion)


def _caption(subject: str, motion: str) -> str:
    """identities.caption's grammar: "<subject> nods, camera still", "<subject>, camera pans left",
    "a photo of <subject>" (still)."""
    if motion in identities.PERSON_ONLY:
        return f"{subject} {motion}, camera still"
    if motion in identities.CAMERA_ONLY:
        return f"{subject}, {motion}"
    return f"a photo of {subject}"


if __name__ == "__main__":
    main()
