"""Seconds per video for each reward of rewards.py, on a synthetic but realistic Wan-sized video.

The video (default 81 frames, 480x832): a natural photo seen through a camera that pans, with a
real face (skimage's astronaut) walking across it and growing slightly, so detection, flow and
CLIP all see realistic content. One-time costs (loading encoders and references) are timed apart
from per-video costs: batch scoring pays them once.

    python bench/bench_rewards.py                      # all three, CPU
    python bench/bench_rewards.py --rewards sem --device cuda
Without --clip, r_sem runs a randomly initialised CLIP of ViT-B/32's shape: timing only.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import faces as F  # noqa: E402
import judges as J  # noqa: E402
import rewards as R  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=81, help="frames per video")
    p.add_argument("--height", type=int, default=480, help="frame height, px")
    p.add_argument("--width", type=int, default=832, help="frame width, px")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per reward (median reported)")
    p.add_argument("--rewards", default="id,dyn,sem", help="comma list of id, dyn, sem")
    p.add_argument("--id-backend", default="auto", help="auto | dlib | insightface")
    p.add_argument("--id-frames", type=int, default=16, help="frames sampled for r_id")
    p.add_argument("--flow-preset", default="medium", help="DIS preset: ultrafast | fast | medium")
    p.add_argument("--clip", default=None, help="local CLIP checkpoint folder (default: random ViT-B/32)")
    p.add_argument("--device", default="cpu", help="torch device for CLIP")
    args = p.parse_args()
    wanted = set(args.rewards.split(","))

    video = synthetic_video(args.frames, args.height, args.width)  # uint8 [F, H, W, 3]
    print(f"video: {video.shape[0]} frames {video.shape[1]}x{video.shape[2]}, {cv2.getNumThreads()} OpenCV threads")
    rows = []
    if "id" in wanted:
        t0 = time.perf_counter()
        encoder = F.make_face_encoder(args.id_backend)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ref.png"
            cv2.imwrite(str(path), skimage.data.astronaut()[..., ::-1])
            refs = F.load_references([path], encoder)
        setup = time.perf_counter() - t0
        seconds, score = timed(lambda: R.identity_reward(video, refs, encoder, args.id_frames), args.repeats)
        rows.append(("r_id", encoder.name, seconds, setup,
                     f"{args.id_frames} frames, r_id={score.reward:.3f}, hit rate {score.face_hit_rate:.2f}"))
    if "dyn" in wanted:
        seconds, score = timed(lambda: R.dynamic_reward(video, 16.0, args.flow_preset), args.repeats)
        rows.append(("r_dyn", f"DIS {args.flow_preset}", seconds, 0.0,
                     f"{len(video) - 1} pairs + VBench pairs, r_dyn={score.reward:.2f}, dynamic={score.is_dynamic}"))
    if "sem" in wanted:
        t0 = time.perf_counter()
        clip = J.load_clip(args.clip, args.device) if args.clip else random_clip(args.device)
        setup = time.perf_counter() - t0
        prompt = "an astronaut walks through a coffee shop"
        seconds, score = timed(lambda: R.prompt_reward(video, prompt, clip), args.repeats)
        rows.append(("r_sem", f"{clip.name} ({args.device})", seconds, setup, "8 frames"))

    print(f"\n{'reward':<7}{'backend':<34}{'s/video':>9}{'setup s':>9}  notes")
    for name, backend, seconds, setup, notes in rows:
        print(f"{name:<7}{backend:<34}{seconds:>9.3f}{setup:>9.2f}  {notes}")


def timed(fn, repeats):
    """Median wall seconds of `repeats` calls after one warm-up call; returns (seconds, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def synthetic_video(frames, height, width):
    """A camera panning 2 px/frame over a natural photo while a face walks across and grows."""
    scene = cv2.resize(skimage.data.coffee(), (width + 2 * frames + 8, height + 8), interpolation=cv2.INTER_CUBIC)
    head = skimage.data.astronaut()[20:260, 100:340]  # [240, 240, 3] head and shoulders
    video = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        video[f] = scene[4:4 + height, 2 * f: 2 * f + width]
        side = int(min(height, width) * (0.45 + 0.1 * f / max(1, frames - 1)))
        face = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
        x = int((width - side) * f / max(1, frames - 1))
        y = (height - side) // 3
        video[f, y:y + side, x:x + side] = face
    return video


def random_clip(device):
    """CLIP with ViT-B/32's shape and random weights, and a byte-level tokenizer: timing only."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(sorted(ByteLevel.alphabet()))})
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1))
    torch.manual_seed(0)
    model = CLIPModel(config).eval().to(device)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    return J.ClipScorer(model, processor, device, "random ViT-B/32")


if __name__ == "__main__":
    main()
