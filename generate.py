"""generate.py — put the customized person into new videos.

    video = decode( solve the backbone's sampler from noise, conditioned on the prompt, with the LoRA on )

Loads a backbone (model.py), optionally a MagicID LoRA written by train.py, and writes for every
prompt an mp4 and a PNG contact sheet of its frames to --out. Prompts name the person with the same
token the LoRA was trained with (train.py's --token, "sks" by default): "a sks person surfing"; in a
--prompts file, "{person}" stands for "a <token> person" (prompt_files.py), as in train.py's files.

    python generate.py --model tiny --prompt "a person walking" --out /tmp/g          # offline, CPU
    python generate.py --lora runs/me/magicid_lora --prompt "a sks person surfing"   # Wan2.1-1.3B, GPU

A LoRA from train.py records the base model it was trained on and its token (magicid.json, lora.py):
with --lora, --model and --token default to those; a run folder stands for its magicid_lora/.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from tqdm import tqdm

import flags
import media
from lora import find_lora
from cli import ArgumentParser, HelpFormatter, add_model_args, load_model_from_args
from model import ModelLoadError
from prompt_files import person_phrase, read_prompts


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, every value checked before anything loads (flags.check_generate_args): one line, exit 2."""
    parser = ArgumentParser(prog="generate.py", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    # --model's default applies without a LoRA; with one, the base model it records (magicid.json)
    parser.set_defaults(model=None, model_without_lora=parser.get_default("model"))
    parser.add_argument("--lora", default=None, help="LoRA folder from train.py, or its run folder; --model and "
                                                     "--token default to what it was trained with (without a LoRA: "
                                                     f"--model {parser.get_default('model_without_lora')})")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt; repeat the flag for several")
    parser.add_argument("--prompts", default=None, help="text file, one prompt per line; {person} -> 'a <token> person'")
    parser.add_argument("--token", default=None, help="the word the LoRA was trained with (train.py --token; "
                                                      "default: the LoRA's, else sks)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from (classifier-free guidance)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video, 4k+1 (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="pixels, multiple of 16 (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="pixels, multiple of 16 (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first video; video i uses seed + i")
    parser.add_argument("--videos-per-prompt", type=int, default=1, help="videos per prompt (seeds differ)")
    parser.add_argument("--out", default="outputs", help="folder for the mp4s and contact sheets")
    return flags.parse_or_exit("generate.py", parser.parse_args, flags.check_generate_args, argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    try:  # every input checked before the model loads
        lora, trained = find_lora(args.lora) if args.lora else (None, {})
        base = trained.get("base_model")
        if args.model is None:
            args.model = base or args.model_without_lora
            if base:
                print(f"model: {base}, the LoRA's base model", file=sys.stderr)
        elif base and same_model(args.model) != same_model(base):
            print(f"warning: the LoRA was trained on {base!r}, not on --model {args.model!r}", file=sys.stderr)
        token = args.token or trained.get("token", "sks")
        prompts = list(args.prompt) + (read_prompts(args.prompts, person_phrase(token)) if args.prompts else [])
        if not prompts:
            raise ValueError('give at least one --prompt "..." or a --prompts file')
    except (ValueError, ModelLoadError) as error:
        sys.exit(f"error: {error}")
    try:
        model = load_model_from_args(args)
        if lora:
            model.load_lora(lora, name="default")
    except ModelLoadError as error:
        sys.exit(f"error: {error}")

    try:  # fail on a bad size now, not after the first video
        model.check_video_size(args.frames, args.height, args.width)
    except ValueError as error:
        sys.exit(f"error: {error}")
    model.cache_prompts(prompts + [args.negative_prompt])  # low memory: one visit of the text encoder to the GPU
    written = []
    jobs = [(p, args.seed + k * len(prompts) + i) for k in range(args.videos_per_prompt) for i, p in enumerate(prompts)]
    for prompt, seed in tqdm(jobs, desc="generating", unit="video"):
        videos, _ = model.sample([prompt], frames=args.frames, height=args.height, width=args.width,
                                 steps=args.steps, guidance=args.guidance, seed=[seed],
                                 negative_prompt=args.negative_prompt)
        stem = os.path.join(args.out, f"{slug(prompt)}_seed{seed}")
        media.write_video(stem + ".mp4", videos[0], fps=model.defaults.fps)
        media.write_png(stem + ".png", media.contact_sheet(videos[0]))
        written.append(stem + ".mp4")
    print(f"wrote {len(written)} video(s) to {os.path.abspath(args.out)}")
    return written


def same_model(name: str) -> str:
    """A model name compared as the model it loads: a local folder by its absolute path."""
    path = os.path.expanduser(name)
    return os.path.realpath(path) if os.path.isdir(path) else name


def slug(text: str, length: int = 48) -> str:
    """A file-name-safe stem of a prompt: 'A sks person, surfing!' -> 'a_sks_person_surfing'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:length] or "video"


if __name__ == "__main__":
    main()
