"""fast_sampling.py — Wan's flow-matching sampler with classifier-free guidance, without the stock pipeline's waste.

    v_t     = v(x_t, t, c_neg) + g · (v(x_t, t, c) − v(x_t, t, c_neg))     classifier-free guidance (CFG)
    x_{t-1} = UniPC step(x_t, v_t)                                        the backbone's own scheduler

Lossless by default: the scheduler, the arithmetic and the dtypes of diffusers' WanPipeline, so the same
noise gives the same latents up to bf16 rounding. Prompt embeddings come in already encoded (encode once,
reuse for every video of every round), and the K videos of a prompt go through the transformer together
with both CFG branches as one batch [cond; uncond]. On an H100 at 81 frames that batching is worth nothing
(the 32k-token GEMMs already fill the GPU): the lossless speed-up comes from compiling the transformer's
blocks (model.enable_speedups(compile_blocks=True), generate.py's --compile): 1.22x over the stock
pipeline, the same as compiling the stock pipeline (bench/NOTES.md has the figures and output differences).

Fast mode, for building the preference repository (lossy, off by default; each flag's measured output
difference is in bench/NOTES.md):
    steps           fewer UniPC steps (a multistep solver of order 2 stays close at 10-15 steps)
    cfg_interval=k  run the unconditional branch only every k-th step and reuse the last guidance
                    direction d = v(x, t, c) − v(x, t, c_neg) in between:  v_t = v(x_t, t, c) + (g − 1)·d

Flow-matching backbones only (Wan); supports(model) says whether a model can use it. Callers use
model.sample(..., cfg_interval=k): it draws the noise and encodes the prompts, then calls sample_latents.
Exports: sample_latents, supports.
"""

from __future__ import annotations

import torch


def supports(model) -> bool:
    """True for flow-matching backbones (Wan); CogVideoX's DDIM/DPM samplers stay with model.sample."""
    return model.objective == "flow"


@torch.no_grad()
def sample_latents(model, text_emb: torch.Tensor, negative_emb: torch.Tensor, noise: torch.Tensor,
                   steps: int | None = None, guidance: float | None = None, cfg_interval: int = 1) -> torch.Tensor:
    """Denoise `noise` [B, C, f, h, w] under prompts text_emb [B, L, D] -> latents [B, C, f, h, w] (fp32).

    negative_emb: [1, L, D] (one negative prompt for all) or [B, L, D]. steps/guidance default to the
    model's. cfg_interval > 1 is the lossy fast mode described above.
    """
    if not supports(model):
        raise ValueError(f"fast_sampling runs flow-matching backbones (Wan); use model.sample for {model.name!r}")
    if cfg_interval < 1:
        raise ValueError(f"cfg_interval must be >= 1, got {cfg_interval}")
    steps = steps or model.defaults.steps
    guidance = model.defaults.guidance if guidance is None else guidance
    B = noise.shape[0]
    text_emb = text_emb.to(model.device, model.dtype)
    negative_emb = negative_emb.to(model.device, model.dtype).expand(B, -1, -1)
    both_emb = torch.cat([text_emb, negative_emb])                       # [2B, L, D]: cond rows, then uncond
    scheduler = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)  # fresh state per call
    scheduler.set_timesteps(steps, device=model.device)
    latents = noise.to(model.device, torch.float32)                     # [B, C, f, h, w], fp32 like the pipeline
    direction = None                                                    # last v(c) − v(c_neg)
    for i, t in enumerate(scheduler.timesteps):
        x = latents.to(model.dtype)
        if guidance <= 1.0:                                             # the stock pipeline's rule: no CFG at g ≤ 1
            velocity = _predict(model, x, t, text_emb)
        elif i % cfg_interval == 0:
            cond, uncond = _predict(model, torch.cat([x, x]), t, both_emb).chunk(2)
            direction = cond - uncond
            velocity = uncond + guidance * direction                    # the pipeline's formula, in its dtype
        else:
            velocity = _predict(model, x, t, text_emb) + (guidance - 1) * direction
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents.float()


def _predict(model, x: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    # WanPipeline guides in the transformer's dtype; predict's fp32 copy of a bf16 output casts back exactly.
    return model.predict(x, t.expand(x.shape[0]), text_emb).to(model.dtype)
