"""toyworld/identity_gate.py — can the project's r_id tell the procedural identities apart?

The population (identities.py) is only useful if the ID reward, exactly as train.py scores a video
(faces.load_references on the reference photos, rewards.identity_reward's frame sampling, face search
and r_id = min(1, p/p_min)·mean cos), separates the same identity from a different one. For N held-out
identities, each with K reference stills (written as PNGs and read back like a user's photos) and V
videos across pose, expression and motion (head-and-shoulders, camera still):

  same  = r_id(video of i | references of i)         (N·V scores)
  diff  = r_id(video of i | references of j ≠ i)     (N·V·(N−1) scores)
  AUC   = P(same > diff) + ½·P(same = diff)           (Mann-Whitney, over all same × diff pairs)
  face-hit rate = fraction of sampled frames where the ID reward's video search finds a face
  AUC over the videos with faces: the same AUC over the videos whose face was found in ≥ p_min of their
                  frames (the embedding's part, where detection did its part)

Gate (issue 26): AUC ≥ 0.97 and face-hit ≥ 0.95. Each video's faces are found and embedded once
(rewards.identity_reward's steps, split so the N reference sets reuse them: the same numbers).
--backend picks the ID encoder (dlib, train.py's offline default, or toyface: toy_face.py). --degrade σ
scores the videos as a generated video would look (the references stay clean stills, as a user's photos):
every frame blurred by a gaussian of σ px, then through the tiny VAE's round trip (toyworld/generated_look.py).

    python toyworld/identity_gate.py --identities 12 --videos 3      # the figure in toyworld/README.md
    python toyworld/identity_gate.py --backend toyface --degrade 1   # the toy face encoder, degraded videos

Exports: GATE_AUC, GATE_FACE_HIT, measure_gate, auc, main.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from toyworld import identities, world as toy  # noqa: E402
from toyworld.generated_look import blur_videos, vae_round_trip  # noqa: E402

GATE_AUC, GATE_FACE_HIT = 0.97, 0.95
GATE_MOTIONS = ("still", "turns their head", "nods", "talks", "smiles", "sways")  # pose and expression


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--identities", type=int, default=12, help="held-out identities (seeds from --first)")
    p.add_argument("--first", type=int, default=identities.HELDOUT_FROM + 500, help="first identity seed")
    p.add_argument("--videos", type=int, default=3, help="videos per identity")
    p.add_argument("--stills", type=int, default=4, help="reference stills per identity")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--backend", default="dlib", choices=["dlib", "toyface"], help="ID encoder (train.py's --id-backend)")
    p.add_argument("--model-root", default=None, help="toyface: its weights folder (default weights/toyface)")
    p.add_argument("--degrade", type=float, default=None,
                   help="σ in px: blur the videos' frames by it and pass them through the tiny VAE (default: clean)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    start = time.time()
    result = measure_gate(list(range(args.first, args.first + args.identities)), args.videos, args.stills, args.frames,
                          backend=args.backend, model_root=args.model_root, degrade=args.degrade)
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("same", "diff", "face_hit_per_video")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def measure_gate(seeds: list[int], videos_per_identity: int = 3, stills: int = 4, frames: int = 9,
                 size: int = 128, world_seed: int = 0, backend: str = "dlib", model_root=None,
                 degrade: float | None = None, encoder=None) -> dict:
    """encoder: an ID encoder already made (else make_face_encoder(backend, model_root), as train.py does)."""
    from faces import load_references, make_face_encoder
    from PIL import Image
    from rewards import MIN_FACE_PRESENCE, cosine_to_reference, identity_from_frames, sample_frame_indices

    encoder = encoder or make_face_encoder(backend, model_root)                # train.py's --id-backend
    with tempfile.TemporaryDirectory() as folder:
        refs = []
        for seed in seeds:
            own = Path(folder) / str(seed)
            own.mkdir()
            for i, still in enumerate(identities.reference_stills(seed, stills, accept=lambda image: bool(
                    encoder.find_faces(image, thorough=True)))):
                Image.fromarray(still).save(own / f"{i}.png")
            refs.append(load_references([own], encoder).mean_embedding)        # ē of identity `seed`: [D]
    world = toy.ToyWorld("cpu", seed=world_seed)
    owners = [i for i in range(len(seeds)) for _ in range(videos_per_identity)]
    motions = [GATE_MOTIONS[(k * 5 + owner) % len(GATE_MOTIONS)] for k, owner in enumerate(owners)]
    videos, captions, _ = identities.render_identity_videos([seeds[i] for i in owners], world, frames, 128,
                                                            motions, ["head-and-shoulders"] * len(owners))
    if degrade is not None:                                                    # as a generated video: soft, VAE'd
        videos = vae_round_trip(blur_videos(videos, degrade) if degrade > 0 else videos)
    frames_u8 = toy.to_uint8(videos)                                           # [n, F, H, W, 3]
    scores = np.zeros((len(owners), len(seeds)))                               # r_id(video v | references of j)
    hits, heights = [], []
    for v, video in enumerate(frames_u8):
        sampled = video[sample_frame_indices(len(video), 16)]                  # identity_reward's num_frames=16
        emb, found = encoder.embed_faces(sampled, mean_ref=refs[owners[v]])    # [S, D], [S]
        heights += [float(f.box[3] - f.box[1]) for f in encoder.find_faces(video[len(video) // 2])]  # HOG's box
        hits.append(float(found.mean()))
        for j, ref in enumerate(refs):
            scores[v, j] = identity_from_frames(cosine_to_reference(emb, found, ref), found)
    same = scores[np.arange(len(owners)), owners]
    others = [np.delete(scores[v], owners[v]) for v in range(len(owners))]    # r_id of video v | other people
    diff = np.concatenate(others)
    value = auc(same, diff)
    # The same over the videos whose face was found in at least p_min of the frames: how well the embedding
    # separates people where the detector did its part (r_id shrinks the others toward 0 whoever they show).
    seen = np.array(hits) >= MIN_FACE_PRESENCE                                 # [videos]
    diff_seen = np.concatenate([row for row, with_face in zip(others, seen) if with_face] or [[]])
    return {"backend": encoder.name, "degrade_sigma": degrade, "seeds": seeds, "videos": len(owners), "auc": value,
            "face_hit_rate": float(np.mean(hits)), "same_mean": float(same.mean()), "diff_mean": float(diff.mean()),
            "gap": float(same.mean() - diff.mean()), "videos_with_faces": int(seen.sum()),
            "auc_videos_with_faces": auc(same[seen], diff_seen) if seen.any() else None,
            "face_box_height_px": {"min": min(heights, default=0.0), "median": float(np.median(heights or [0]))},
            "passes": bool(value >= GATE_AUC and np.mean(hits) >= GATE_FACE_HIT),
            "same": same.tolist(), "diff": diff.tolist(), "face_hit_per_video": hits, "captions": captions[:6]}


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative) + ½·P(tie), over every pair (Mann-Whitney U / (n₊·n₋))."""
    positive, negative = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float((positive > negative).mean() + 0.5 * (positive == negative).mean())


if __name__ == "__main__":
    main()
