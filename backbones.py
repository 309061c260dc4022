"""backbones.py — which text-to-video backbones magicid knows, what each was trained to produce, and how a
name (preset, hub id or local folder) becomes a diffusers pipeline.

    name --load_pipeline--> (pipe, family, defaults)     family: "wan" | "cogvideox"; defaults: VideoDefaults

Only safetensors weights are read and no remote code runs. A Wan2.2 pipeline is told apart by its config:
expand_timesteps (TI2V-5B) or a second transformer (T2V-A14B). model.VideoModel wraps what this returns.

Exports: MODEL_PRESETS, VideoDefaults, DEFAULTS, load_pipeline, name_to_record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import tiny
from experts import split_expert_choice
from lora import ModelLoadError

# Hub ids of the published checkpoints, by the short names the CLI accepts.
MODEL_PRESETS = {
    "wan-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.2-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    "wan2.2-14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",  # ":high" / ":low" after the name: train that expert only
    "cogvideox-2b": "THUDM/CogVideoX-2b",
    "cogvideox-5b": "THUDM/CogVideoX-5b",
}
@dataclass(frozen=True)
class VideoDefaults:
    """What a backbone was trained to produce; generate.py and train.py start from these."""

    frames: int
    height: int
    width: int
    fps: int
    steps: int
    guidance: float
    max_text_tokens: int
    guidance_2: float | None = None  # Wan2.2-A14B: the low-noise expert's guidance (WanPipeline's guidance_scale_2)


DEFAULTS = {
    "wan": VideoDefaults(frames=81, height=480, width=832, fps=16, steps=30, guidance=5.0, max_text_tokens=512),
    # Wan2.2 as published (Wan-AI/Wan2.2 generate.py configs): TI2V-5B 121 frames of 704x1280 at 24 fps, 50 steps;
    # T2V-A14B 81 frames of 720x1280 at 16 fps, 40 steps, guidance 4.0 (high noise) and 3.0 (low noise).
    "wan2.2-5b": VideoDefaults(frames=121, height=704, width=1280, fps=24, steps=50, guidance=5.0, max_text_tokens=512),
    "wan2.2-14b": VideoDefaults(frames=81, height=720, width=1280, fps=16, steps=40, guidance=4.0,
                                max_text_tokens=512, guidance_2=3.0),
    "cogvideox": VideoDefaults(frames=49, height=480, width=720, fps=8, steps=50, guidance=6.0, max_text_tokens=226),
    # The tiny toy-world base over-saturates at Wan's guidance 5 (toyworld/README.md); 3 keeps its colours.
    "tiny": VideoDefaults(frames=9, height=128, width=128, fps=8, steps=20, guidance=3.0, max_text_tokens=64),
}


def load_pipeline(name_or_path: str, dtype: torch.dtype, vae_dtype: torch.dtype):
    """(pipe, family, defaults) of a tiny preset (built locally), a preset name, hub id or local diffusers folder."""
    if name_or_path in tiny.TINY_PRESETS:
        family = "cogvideox" if "cogvideox" in name_or_path else "wan"
        return tiny.build_tiny_pipeline(name_or_path), family, DEFAULTS["tiny"]
    pipe = _load_diffusers_pipeline(MODEL_PRESETS.get(name_or_path, name_or_path), dtype, vae_dtype)
    family = _family_of(pipe)
    return pipe, family, DEFAULTS[_wan22_kind(pipe) or family]


def _family_of(pipe) -> str:
    from diffusers import CogVideoXPipeline, WanPipeline

    if isinstance(pipe, WanPipeline):
        return "wan"
    if isinstance(pipe, CogVideoXPipeline):
        return "cogvideox"
    raise ModelLoadError(f"{type(pipe).__name__} is not supported: use a Wan2.1-T2V or CogVideoX text-to-video model.")


def _wan22_kind(pipe) -> str | None:
    """"wan2.2-5b" (per-token timesteps), "wan2.2-14b" (two experts) or None, read from the pipeline's config."""
    if getattr(pipe.config, "expand_timesteps", False):
        return "wan2.2-5b"
    return "wan2.2-14b" if getattr(pipe, "transformer_2", None) is not None else None


def name_to_record(name: str) -> str:
    """The base model as a LoRA file records it: a preset or hub id as given, a local folder as an absolute
    path, so that generate.py finds it again from any working directory; an expert choice (":high" / ":low",
    experts.py) stays on the end."""
    base, _ = split_expert_choice(name)
    path = os.path.expanduser(base)
    if base in MODEL_PRESETS or base in tiny.TINY_PRESETS or not os.path.isdir(path):
        return name
    return os.path.abspath(path) + name[len(base):]


def _load_diffusers_pipeline(name_or_path: str, dtype: torch.dtype, vae_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    path = os.path.expanduser(name_or_path)
    is_hub_id = path.count("/") == 1 and not path.startswith((".", "/")) and not os.path.exists(path)
    if not os.path.isdir(path) and not is_hub_id:
        raise ModelLoadError(f"model folder {name_or_path!r} does not exist. Pass a diffusers model folder, "
                             f"a hub id, one of {sorted(MODEL_PRESETS)}, or --model tiny for an offline run.")
    try:
        return DiffusionPipeline.from_pretrained(path, dtype={"default": dtype, "vae": vae_dtype},
                                                 use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load {name_or_path!r}: {error}\nIf this machine is offline, download the model elsewhere and "
            "pass its folder, or use --model tiny (built locally, no download).") from error
