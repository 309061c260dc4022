"""toyworld/base_check.py — what the toy-world base knows: does it move as captioned, and draw a person?

MagicID's claim 2 can only be measured on a base that (a) moves when asked, in the direction asked,
(b) holds still when not asked, and (c) draws some person with a face dlib finds, also while moving.
This samples the base (`--model tiny`, 12 steps, CFG 3, 9 frames at 128²) on fixed prompts and seeds:

  camera motions   every motion of world.MOTIONS on two non-face subjects (a cat, a rocket)
  person motions   every motion of people.PERSON_MOTIONS for "a person", camera still, and a person
                   under every camera motion ("a person, camera pans left")
and reports, each as mean [95 % bootstrap CI] where it is a mean over videos:
  follow_rate      videos whose optical flow follows the caption (toyworld/motion.py), per motion too
  direction_rate   the same over the motions whose caption names a direction (pans, tilts, zooms, walks)
  face_hit_rate    fraction of frames where dlib's HOG detector finds a face (find_faces), on the person
                   prompts; video_face_hit_rate: the same with the rewards' video search (find_video_faces:
                   HOG, then MTCNN, then the neighbouring frames); toyface_hit_rate: the toy world's own detector
                   (toy_face.py), on the person prompts and (no_one_) on the others: what the population
                   benchmark's r_id (--id-backend toyface) counts
  r_dyn            rewards.dynamic_reward, px at a 256-px side: person prompts, and "still" prompts

    python toyworld/base_check.py                 # ~3 min on a 2-core CPU; runs/toyworld/base_check.json
    python toyworld/base_check.py --model tiny-toyworld --out runs/toyworld_population/base_check.json

Exports: check_base, main.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toyworld import motion, people, world  # noqa: E402

SUBJECTS = ("a cat", "a rocket")
SEEDS = (0, 1)   # per prompt; video seed = seed (model.sample's own)
STEPS = 12


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "toyworld" / "base_check.json"))
    p.add_argument("--model", default="tiny", help="the tiny preset to check (tiny-toyworld: the population base)")
    args = p.parse_args(argv)
    from model import VideoModel

    result = check_base(VideoModel.from_pretrained(args.model))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(report(result))
    return result


def base_prompts() -> list[tuple[str, str, bool]]:
    """(prompt, motion, shows a person) for every check, in a fixed order."""
    rows = [(f"a photo of {s}" if m == "still" else f"{s}, {m}", m, False) for m in world.MOTIONS for s in SUBJECTS]
    rows += [(f"a person {m}, camera still", m, True) for m in people.PERSON_MOTIONS]
    rows += [("a photo of a person" if m == "still" else f"a person, {m}", m, True) for m in world.MOTIONS]
    return rows


def check_base(model=None) -> dict:
    from evaluate import bootstrap_ci
    from faces import DlibFaceEncoder
    from model import VideoModel
    from rewards import dynamic_reward

    from toy_face import ToyFaceEncoder

    model = model or VideoModel.from_pretrained("tiny")
    encoder, toy_encoder = DlibFaceEncoder(), ToyFaceEncoder()
    videos_rows = []
    for prompt, motion_name, person in base_prompts():
        videos, _ = model.sample([prompt] * len(SEEDS), seed=list(SEEDS), steps=STEPS)   # [S, F, H, W, 3]
        for seed, video in zip(SEEDS, videos):
            flow = motion.measure_motion(video)
            videos_rows.append({
                "prompt": prompt, "motion": motion_name, "person": person, "seed": seed, **flow,
                "follows": motion.follows_caption(motion_name, flow),
                "r_dyn": dynamic_reward(video, model.defaults.fps).reward,
                "face_hits": float(np.mean([bool(encoder.find_faces(frame)) for frame in video])) if person else None,
                "video_face_hits": float(np.mean([bool(f) for f in encoder.find_video_faces(video)])) if person else None,
                "toyface_hits": float(np.mean([bool(f) for f in toy_encoder.find_video_faces(video)]))})

    def ci(values):
        return list(bootstrap_ci(np.asarray(values, float)))

    person = [r for r in videos_rows if r["person"]]
    per_motion = {}
    for r in videos_rows:
        per_motion.setdefault(r["motion"], []).append(r["follows"])
    return {
        "follow_rate": ci([r["follows"] for r in videos_rows]),
        "direction_rate": ci([r["follows"] for r in videos_rows if r["motion"] in motion.DIRECTED]),
        "follow_per_motion": {m: float(np.mean(v)) for m, v in per_motion.items()},
        "person_face_hit_rate": ci([r["face_hits"] for r in person]),
        "person_moving_face_hit_rate": ci([r["face_hits"] for r in person if r["motion"] != "still"]),
        "person_video_face_hit_rate": ci([r["video_face_hits"] for r in person]),
        "person_toyface_hit_rate": ci([r["toyface_hits"] for r in person]),
        "no_one_toyface_hit_rate": ci([r["toyface_hits"] for r in videos_rows if not r["person"]]),
        "person_r_dyn": ci([r["r_dyn"] for r in person if r["motion"] != "still"]),
        "still_r_dyn": ci([r["r_dyn"] for r in videos_rows if r["motion"] == "still"]),
        "moving_r_dyn": ci([r["r_dyn"] for r in videos_rows if r["motion"] != "still"]),
        "videos": videos_rows,
    }


def report(result: dict) -> str:
    keys = ("follow_rate", "direction_rate", "person_face_hit_rate", "person_moving_face_hit_rate", "person_video_face_hit_rate",
            "person_toyface_hit_rate", "no_one_toyface_hit_rate", "person_r_dyn", "moving_r_dyn", "still_r_dyn")
    lines = [f"- {k}: {result[k][0]:.3f} [{result[k][1]:.3f}, {result[k][2]:.3f}]" for k in keys]
    lines.append("- follows, per motion: " + ", ".join(f"{m} {v:.2f}" for m, v in result["follow_per_motion"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
