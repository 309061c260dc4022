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
    cache=...       one of diffusers' own cache hooks (diffusers.hooks) on the transformer, which skip
                    blocks whose output they expect to barely change and reuse a cached residual instead:
                    "first-block:δ"  FirstBlockCache: run block 1; if its residual moved less than δ (relative
                                     mean |Δ|) since the last full forward, add the cached residual of blocks 2..N
                    "sea:δ"          SeaCache: the same skip, gated by the spectrally filtered input's change
                    "taylorseer:k"   TaylorSeer (lite): a full forward every k-th step after 3 warm-up steps, in
                                     between the output extrapolated to first order from the last two full ones
                    The hooks keep state across steps, so each video is denoised alone (the skip decision is
                    per batch: batched, a video would depend on its neighbours) from a reset state, inside
                    transformer.cache_context with the step index and σ the pipeline would pass.
                    block_evaluations(model) counts the blocks that really ran, the work a hook saves.
                    At equal work (toy world, bench/NOTES.md) "sea:0.3" beats cfg_interval=2 (a quarter of
                    the blocks skipped, latents 2.7-5x closer to lossless); for half, fewer steps is as good.

Flow-matching backbones only (Wan); supports(model) says whether a model can use it. Callers use
model.sample(..., cfg_interval=k, cache=...): it draws the noise and encodes the prompts, then calls sample_latents.
Exports: sample_latents, supports, cache_config, block_evaluations.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


def supports(model) -> bool:
    """True for flow-matching backbones (Wan); CogVideoX's DDIM/DPM samplers stay with model.sample."""
    return model.objective == "flow"


@torch.no_grad()
def sample_latents(model, text_emb: torch.Tensor, negative_emb: torch.Tensor, noise: torch.Tensor,
                   steps: int | None = None, guidance: float | None = None, cfg_interval: int = 1,
                   cache=None) -> torch.Tensor:
    """Denoise `noise` [B, C, f, h, w] under prompts text_emb [B, L, D] -> latents [B, C, f, h, w] (fp32).

    negative_emb: [1, L, D] (one negative prompt for all) or [B, L, D]. steps/guidance default to the
    model's. cfg_interval > 1 and cache (a string for cache_config or a diffusers cache config) are the
    lossy fast mode described above; they do not combine (the hooks' state wants one batch shape a step).
    """
    if not supports(model):
        raise ValueError(f"fast_sampling runs flow-matching backbones (Wan); use model.sample for {model.name!r}")
    if cfg_interval < 1:
        raise ValueError(f"cfg_interval must be >= 1, got {cfg_interval}")
    if cache is not None and cfg_interval > 1:
        raise ValueError("choose cfg_interval or a cache hook, not both")
    steps = steps or model.defaults.steps
    guidance = model.defaults.guidance if guidance is None else guidance
    B = noise.shape[0]
    text_emb = text_emb.to(model.device, model.dtype)
    negative_emb = negative_emb.to(model.device, model.dtype).expand(B, -1, -1)
    if cache is None:
        return _denoise(model, text_emb, negative_emb, noise, steps, guidance, cfg_interval)
    transformer = model.transformer
    transformer.enable_cache(cache_config(cache) if isinstance(cache, str) else cache)
    try:
        videos = []
        for b in range(B):                                              # one video at a time, each from a fresh state
            transformer._reset_stateful_cache()                         # what WanPipeline does after every call
            videos.append(_denoise(model, text_emb[b:b + 1], negative_emb[b:b + 1], noise[b:b + 1], steps, guidance,
                                   cfg_interval, cached=True))
        return torch.cat(videos)
    finally:
        transformer._reset_stateful_cache()
        transformer.disable_cache()


def cache_config(spec: str):
    """"first-block:0.05" | "sea:0.25" | "taylorseer:2" -> the diffusers cache config it names."""
    from diffusers.hooks import FirstBlockCacheConfig, SeaCacheConfig, TaylorSeerCacheConfig

    kind, _, value = spec.partition(":")
    try:
        if kind == "first-block":
            return FirstBlockCacheConfig(threshold=float(value))
        if kind == "sea":
            return SeaCacheConfig(threshold=float(value))
        if kind == "taylorseer":  # lite: every block skipped between full forwards, the output head extrapolated
            return TaylorSeerCacheConfig(cache_interval=int(value), use_lite_mode=True,
                                         taylor_factors_dtype=torch.float32)
    except ValueError:
        pass
    raise ValueError(f"cache {spec!r} not understood: use first-block:<threshold, e.g. 0.05>, sea:<threshold, "
                     "e.g. 0.25> or taylorseer:<full forward every k steps, e.g. 2>")


@contextmanager
def block_evaluations(model):
    """Count transformer blocks that really ran, one per block per batch row: yields a 0-d tensor, read int(n).

    A Wan block's feed-forward runs only when the block is computed (the cache hooks replace whole blocks),
    so it is counted there. Lossless CFG sampling of one video: 2 rows × steps × num_layers. The count is a
    tensor, so compiled blocks add to it without recompiling for each new value; under torch.compile, enter
    this before the blocks are first compiled (compiled code ignores hooks added later).
    """
    count = torch.zeros((), dtype=torch.long, device=model.device)

    def counted(module, args, output):
        count.add_(args[0].shape[0])                                    # args[0]: [rows, tokens, D]

    handles = [block.ffn.register_forward_hook(counted) for block in model.transformer.blocks]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _denoise(model, text_emb, negative_emb, noise, steps, guidance, cfg_interval, cached=False) -> torch.Tensor:
    """The sampling loop: noise [B, C, f, h, w] -> latents [B, C, f, h, w] (fp32)."""
    both_emb = torch.cat([text_emb, negative_emb])                       # [2B, L, D]: cond rows, then uncond
    scheduler = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)  # fresh state per call
    scheduler.set_timesteps(steps, device=model.device)
    latents = noise.to(model.device, torch.float32)                     # [B, C, f, h, w], fp32 like the pipeline
    direction = None                                                    # last v(c) − v(c_neg)
    for i, t in enumerate(scheduler.timesteps):
        x = latents.to(model.dtype)
        # The hooks read the step and σ from the context, as WanPipeline passes them (one name: one batch shape).
        context = model.transformer.cache_context("cfg", step_index=i, sigma=float(scheduler.sigmas[i]),
                                                  num_inference_steps=steps) if cached else nullcontext()
        with context:
            if guidance <= 1.0:                                         # the stock pipeline's rule: no CFG at g ≤ 1
                velocity = _predict(model, x, t, text_emb)
            elif i % cfg_interval == 0:
                cond, uncond = _predict(model, torch.cat([x, x]), t, both_emb).chunk(2)
                direction = cond - uncond
                velocity = uncond + guidance * direction                # the pipeline's formula, in its dtype
            else:
                velocity = _predict(model, x, t, text_emb) + (guidance - 1) * direction
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents.float()


def _predict(model, x: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    # WanPipeline guides in the transformer's dtype; predict's fp32 copy of a bf16 output casts back exactly.
    return model.predict(x, t.expand(x.shape[0]), text_emb).to(model.dtype)
