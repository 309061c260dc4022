"""cli.py — the command-line flags every script shares: which model, on which device, how fast; and --help's look.

train.py, generate.py and evaluate.py take the same model flags (--model, --device, --bf16, --compile,
--attention-backend, --low-memory, --fp8) and turn them into a loaded model.VideoModel the same way, with defaults
that follow the device: bf16, compiled blocks on CUDA, the low-memory path on GPUs under 40 GiB
(speedups.py). HelpFormatter prints each script's docstring as written and every flag's default.

Exports: add_model_args, load_model_from_args, HelpFormatter.
"""

from __future__ import annotations

import argparse

import torch

import fp8
from model import MODEL_PRESETS, ModelLoadError, VideoModel
from speedups import LOW_MEMORY_BELOW_GIB


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's --help: its module docstring as written, and each flag's default unless the help
    already names it (or there is none to name)."""

    def _get_help_string(self, action):
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if "default" in (action.help or "") or nothing:
            return action.help
        return super()._get_help_string(action)


def add_model_args(parser) -> None:
    """--model/--device/--bf16/--compile/--attention-backend, the same in train.py, generate.py and evaluate.py."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="wan-1.3b",
                       help=f"preset ({', '.join(sorted(MODEL_PRESETS))}, tiny, tiny-cogvideox, tiny-wan2.2-5b, "
                            "tiny-wan2.2-14b), hub id or local diffusers folder; 'tiny' runs offline on a CPU; "
                            "wan2.2-14b:high or :low trains that expert only (experts.py)")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    group.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bfloat16 transformer and text encoder (default: on for CUDA, off for CPU)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile each transformer block (default: on for CUDA: 1.2-1.3x faster on an "
                            "H100, same output up to bf16 rounding; bench/NOTES.md)")
    group.add_argument("--attention-backend", default=None,
                       help="fa4 (FlashAttention-4, attention.py), sdpa (PyTorch), or a diffusers kernel name such as "
                            "_native_cudnn (default: fa4 on SM90+ GPUs where flash-attn-4 is installed, else sdpa)")
    group.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                       help=f"text encoder on the CPU between uses and a tiled VAE, to fit 24 GiB at 81x480x832 "
                            f"(default: on for GPUs under {LOW_MEMORY_BELOW_GIB} GiB; bench/NOTES.md)")
    group.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=False,
                       help="the transformer blocks' frozen linear weights in float8 and their matmuls on FP8 tensor "
                            "cores (fp8.py; needs the bf16 model, the GPU default, on an SM89+ GPU): half their "
                            "memory and faster matmuls, at the price of FP8 rounding in every output "
                            "(bench/bench_fp8.py measures both); it changes results, so a run records it and a "
                            "--resume must match it")


def load_model_from_args(args, gradient_checkpointing: bool = False, checkpoint_blocks: int | None = None,
                         offload_blocks: int = 0) -> VideoModel:
    import parallel

    device = args.device or str(parallel.device())  # under accelerate launch: this process's GPU
    on_gpu = device.startswith("cuda")
    use_bf16 = args.bf16 if args.bf16 is not None else on_gpu
    low_memory = args.low_memory if args.low_memory is not None else (
        on_gpu and torch.cuda.get_device_properties(torch.device(device)).total_memory < LOW_MEMORY_BELOW_GIB * 2**30)
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    if args.fp8 and (reason := fp8.fp8_unsupported(device, dtype)):  # said before the slow load, not after
        raise ModelLoadError(reason)
    model = VideoModel.from_pretrained(args.model, dtype=dtype, device=device, low_memory=low_memory)
    if low_memory:
        print("low-memory path: text encoder on the CPU between uses, tiled VAE (--no-low-memory turns it off)")
    if args.fp8:
        model.enable_fp8()
    model.enable_speedups(compile_blocks=args.compile if args.compile is not None else on_gpu,
                          gradient_checkpointing=gradient_checkpointing, checkpoint_blocks=checkpoint_blocks,
                          offload_blocks=offload_blocks,
                          keep_attention=gradient_checkpointing and not low_memory,  # +9 GiB at 81 frames
                          attention_backend=args.attention_backend or ("fa4" if on_gpu else None))
    return model
