"""The benchmark subject: Wan2.1-T2V-1.3B at its published config with random weights, and its FLOP count.

Every bench/ script times the code path users run: a diffusers WanPipeline (published transformer
and VAE configs, the published UniPC flow scheduler) inside model.py's VideoModel. Weights are random
(seeded): speed does not depend on their values, and nothing is downloaded. The text encoder is a
tiny stand-in: the benchmarks pass prompt embeddings [B, 512, 4096] directly, as the training loop
does with its cached ones.

FLOPs of one transformer forward (matmuls only, 2 FLOPs a multiply-add; D = 1536 width, S tokens
per video, T = 512 text tokens, M = 8960 FFN width, r = LoRA rank, per token and per block):
    self-attention projections q, k, v, o      8·D²
    self-attention scores QKᵀ and AV           4·S·D
    cross-attention projections q, o           4·D²          (k, v: 4·D²·T/S, on the text tokens)
    cross-attention scores over T text tokens  4·T·D
    feed-forward D → M → D                     4·D·M
    LoRA on q, k, v, o of both attentions      16·D·r + 8·D·r (+ 8·D·r·T/S)
times 30 blocks times B·S tokens, plus the patch embedding, text and timestep projections and output head.
A DPO step's useful work is one reference forward plus one policy forward and backward,
counted as 1 + 3 forwards (no recomputation, the backward as twice the forward).

Exports: PUBLISHED_TRANSFORMER, start, build_published, set_compiled, set_attention, dpo_batch, tokens, forward_flops,
dpo_step_flops, environment, matmul_ceiling, timed, timed_loop, timed_once, print_table, Deadline.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny  # noqa: E402
from model import DEFAULTS, VideoModel  # noqa: E402

# transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
PUBLISHED_TRANSFORMER = dict(
    num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096, freq_dim=256,
    in_channels=16, out_channels=16, patch_size=(1, 2, 2), cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# --small: the published widths at 2 blocks and a tiny VAE, so every script runs on a laptop CPU in seconds
SMALL_TRANSFORMER = dict(PUBLISHED_TRANSFORMER, num_layers=2)
SMALL_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TEXT_TOKENS = 512


def build_published(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, small: bool = False,
                    seed: int = 0) -> VideoModel:
    """VideoModel over a WanPipeline at the published config (random weights; --small: 2 blocks)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = WanTransformer3DModel(**(SMALL_TRANSFORMER if small else PUBLISHED_TRANSFORMER))
        vae = AutoencoderKLWan(**(SMALL_VAE if small else {}))  # the published VAE is the class defaults
    # Like from_pretrained(dtype=bf16): parameters in `dtype`, except the modules Wan keeps in fp32;
    # buffers (the rotary tables) stay fp32.
    keep = set(transformer._keep_in_fp32_modules)
    for name, p in transformer.named_parameters():
        if not keep.intersection(name.split(".")):
            p.data = p.data.to(dtype)
    stand_in = tiny.build_tiny_pipeline("tiny")  # tokenizer and text encoder: never on the timed path
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)  # published for 480p
    pipe = WanPipeline(tokenizer=stand_in.tokenizer, text_encoder=stand_in.text_encoder.to(device), vae=vae,
                       scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return VideoModel(pipe, "wan", DEFAULTS["wan"], "wan-1.3b-random" + ("-small" if small else ""))


def set_compiled(model: VideoModel, on: bool) -> None:
    """Switch torch.compile of every transformer block on (model.enable_speedups) or back to eager."""
    if on:
        model.enable_speedups(compile_blocks=True)
    else:
        for block in model.transformer.blocks:
            block._compiled_call_impl = None


def set_attention(model: VideoModel, backend: str | None) -> None:
    """The attention kernel: None/"sdpa" = PyTorch SDPA's own choice, "fa4" (attention.py), "_native_cudnn", ..."""
    model.enable_speedups(attention_backend=backend or "sdpa")


def dpo_batch(model: VideoModel, frames: int, height: int, width: int, pairs: int, device: str) -> dict:
    """Precomputed inputs of `pairs` preference pairs, as train.py caches them: latents of winners and losers
    [pairs, C, f, h, w], prompt embeddings [pairs, TEXT_TOKENS, text_dim] (random, seed 1)."""
    generator = torch.Generator().manual_seed(1)
    shape = (pairs, *model.latent_shape(frames, height, width))
    return {"latents_w": torch.randn(shape, generator=generator).to(device),
            "latents_l": torch.randn(shape, generator=generator).to(device),
            "text_emb": torch.randn(pairs, TEXT_TOKENS, model.transformer.config.text_dim,
                                    generator=generator).to(device, model.dtype)}


def configure_dynamo() -> None:
    """Static shapes (no silent switch to slower dynamic-shape kernels when a second size comes), room for
    the graphs of every variant (grad/no-grad x adapters x attention backends)."""
    import torch._dynamo

    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096


def start(small: bool, budget_s: float) -> tuple[str, Deadline, float]:
    """What every GPU benchmark does first: pick the device (the CPU for --small), start the wall-clock
    budget, configure the compiler, print the environment and measure the bf16 matmul ceiling (NaN on a CPU).
    Returns (device, deadline, ceiling TFLOP/s)."""
    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    deadline = Deadline(budget_s)
    configure_dynamo()
    print(environment(), flush=True)
    ceiling = matmul_ceiling() if device == "cuda" else float("nan")
    print(f"bf16 matmul ceiling: {ceiling:.0f} TFLOP/s", flush=True)
    return device, deadline, ceiling


def tokens(frames: int, height: int, width: int) -> int:
    """Transformer tokens of one video: 4x temporal, 8x spatial VAE compression, then 1x2x2 patches."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def forward_flops(model: VideoModel, tokens_per_video: int, batch: int, lora_rank: int = 0) -> float:
    """Matmul FLOPs of one transformer forward over `batch` videos (the formula in the docstring)."""
    c = model.transformer.config
    D, M, S, T, r = c.num_attention_heads * c.attention_head_dim, c.ffn_dim, tokens_per_video, TEXT_TOKENS, lora_rank
    per_token_block = (8 * D * D + 4 * S * D                     # self-attention
                       + 4 * D * D + 4 * D * D * T / S + 4 * T * D   # cross-attention
                       + 4 * D * M                                # feed-forward
                       + 24 * D * r + 8 * D * r * T / S)           # LoRA
    patch = 2 * c.in_channels * 4 * D + 2 * D * c.out_channels * 4   # patch embedding and output head, per token
    text = 2 * T * (c.text_dim * D + D * D)                          # text projection, per video
    text += 2 * (c.freq_dim * D + D * D + D * 6 * D)                 # timestep embedding, per video
    return batch * (S * (c.num_layers * per_token_block + patch) + text)


def dpo_step_flops(model: VideoModel, tokens_per_video: int, pairs: int, lora_rank: int) -> float:
    """Useful FLOPs of one DPO step: a reference forward + a policy forward and backward (1 + 3 forwards)."""
    return 4 * forward_flops(model, tokens_per_video, 2 * pairs, lora_rank)


def environment() -> str:
    import diffusers
    import peft

    line = f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}"
    if torch.cuda.is_available():
        line = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
                f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, " + line)
    return line


def matmul_ceiling(n: int = 8192, repeats: int = 20) -> float:
    """bf16 TFLOP/s of an n×n×n product on random data: the denominator of every MFU figure."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    seconds = timed(lambda: a @ b, warmup=3, repeats=repeats)
    return 2 * n**3 / seconds / 1e12


def timed(fn, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall seconds of `repeats` calls after `warmup` calls, the device synchronized around each."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_loop(fn, repeats: int = 5) -> float:
    """Wall seconds per call of `repeats` calls back to back, the device synchronized only before and after:
    the host prepares call k + 1 while the device runs call k, as in a training loop that never waits on it."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def timed_once(fn):
    """(wall seconds, result) of one call, the device synchronized around it."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


class Deadline:
    """Wall-clock budget of one benchmark run: skip the variants that would not finish inside it."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def allows(self, seconds: float) -> bool:
        return time.perf_counter() + seconds < self.end


def print_table(title: str, header: list[str], rows: list[list], file=None) -> None:
    """A plain fixed-width table; numbers as given (format them before)."""
    cells = [header] + [[str(x) for x in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title] + ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
                       for row in cells]
    lines.insert(2, "  ".join("-" * w for w in widths))
    print("\n".join(lines), flush=True)
    if file:
        with open(file, "a") as handle:
            handle.write("\n".join(lines) + "\n\n")
