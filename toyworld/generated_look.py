"""toyworld/generated_look.py — what the tiny video model does to a face, to train against and to test on.

A generated frame of the toy world is not a render: the tiny VAE's round trip (8× spatial compression to
16 channels) softens edges and shifts colours, and the transformer adds blur and loses small details. An
identity encoder that only saw clean renders learns details that generated videos do not have. Two tools:

  vae_round_trip(videos)          the tiny preset's own VAE, encode then decode (weights/tiny/vae.safetensors)
  generated_look(crops, rng)      random per-image degradation: colour gain / contrast / brightness,
                                  gaussian blur (σ ≤ 2 px), downscale-upscale (≤ 3×), gaussian noise
  blur_videos(videos, sigma)      a fixed gaussian blur of every frame (identity_gate's --degrade)

toyworld/train_face.py trains the toy face encoder through them; toyworld/identity_gate.py --degrade scores
held-out identities through blur + the VAE. Exports: vae_round_trip, generated_look, blur_videos.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root


def vae_round_trip(videos: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """videos [n, 3, F, H, W] in [-1, 1] (F = 1 + 4k, H and W multiples of 8) -> the same through the tiny
    preset's VAE: decode(encode(x)), the latent's mode (no sampling noise)."""
    vae, out = tiny_vae(), []
    with torch.no_grad():
        for begin in range(0, len(videos), chunk):
            x = videos[begin:begin + chunk].float()
            out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1))  # [b, 3, F, H, W]
    return torch.cat(out) if out else videos


@functools.lru_cache(maxsize=1)
def tiny_vae():
    """The tiny preset's VAE with its shipped weights (loaded once: ~5 s)."""
    from tiny import build_tiny_pipeline

    return build_tiny_pipeline("tiny").vae.eval()


def generated_look(crops: np.ndarray, rng, strength: float = 1.0) -> np.ndarray:
    """uint8 [B, S, S, 3] -> each degraded at random as a generated frame may be. strength scales every
    range (0: unchanged)."""
    out = np.empty_like(crops)
    size = crops.shape[1]
    for i, crop in enumerate(crops.astype(np.float32) / 255):                  # [S, S, 3] in [0, 1]
        gain = 1 + strength * rng.uniform(-0.12, 0.12, 3)                      # per channel: a colour shift
        contrast = 1 + strength * rng.uniform(-0.2, 0.2)
        crop = (crop - crop.mean()) * contrast + crop.mean() * gain + strength * rng.uniform(-0.06, 0.06)
        sigma = strength * rng.uniform(0, 2)
        if rng.random() < 0.7 and sigma > 0.2:
            crop = cv2.GaussianBlur(crop, (0, 0), sigma)
        factor = 1 + strength * rng.uniform(0, 2)
        if rng.random() < 0.5 and factor > 1.1:                                # detail lost to a lower resolution
            small = max(8, round(size / factor))
            crop = cv2.resize(cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                              interpolation=cv2.INTER_LINEAR)
        crop = crop + rng.normal(0, strength * rng.uniform(0, 0.04), crop.shape)
        out[i] = np.clip(crop * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def blur_videos(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    """videos [n, 3, F, H, W] -> every frame blurred with a gaussian of σ = sigma px (separable, reflect border)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = (taps / taps.sum()).to(videos)                                      # [2r + 1]
    n, c, f, h, w = videos.shape
    x = videos.permute(0, 2, 1, 3, 4).reshape(n * f * c, 1, h, w)
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 1, -1))                  # along W
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, -1, 1))                  # along H
    return x.view(n, f, c, h, w).permute(0, 2, 1, 3, 4)
