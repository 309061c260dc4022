"""speedups.py — speed and memory, opt-in and visible: every switch that changes how fast or how small, never what.

    compile_blocks           torch.compile each transformer block (1.2-1.3x on an H100; same output up to bf16 rounding)
    gradient_checkpointing   recompute block activations in backward (the first N blocks)
    keep_attention           ... but keep each checkpointed block's attention output: recompute only the cheap parts
    offload_blocks           ... or keep K blocks' activations in host memory (offload.py), neither on the GPU
                             nor recomputed
    attention_backend        "fa4" (attention.py: FlashAttention-4; cli.py's default on GPUs, SDPA where it cannot
                             run), "sdpa" (PyTorch's own choice), or any name of diffusers' attention registry
    low_memory               text encoder on the CPU between its visits, tiled VAE: a 24 GiB GPU at 81x480x832
    fp8                      the blocks' frozen linear weights in float8 (fp8.py): the one switch that changes
                             results (by FP8 rounding), so a run records it (run.py) and it stays off by default

Each switch is one method of model.VideoModel (this class is its speed half); the CLI turns them on from
--compile, --grad-checkpointing, --attention-backend and --low-memory (cli.py), with defaults measured on an
H100 (bench/NOTES.md). The plain path, all off, is the readable default of the code.

Exports: SpeedSwitches, keep_attention_outputs, keeps_attention, LOW_MEMORY_BELOW_GIB, KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB.
"""

from __future__ import annotations

import functools

import torch

import attention  # defines torch.ops.magicid.flash_attention
from offload import ActivationOffload

# GPUs with less memory take the low-memory path by default (VideoModel.enable_low_memory). Measured on an H100 at
# 81x480x832 (bench/NOTES.md, "Dress rehearsal"): train.py's default path peaks at 25.7 GiB allocated (29.0 reserved),
# the low-memory one at 17.2 GiB and completes inside a 24 GiB cap.
LOW_MEMORY_BELOW_GIB = 40
# Keeping attention outputs costs the A14B's 32,400-token training pairs ~20 GiB more than recomputing them: train.py's
# DPO step kept them and ran out of memory on an H100 80GB (73.2 GiB when it failed); recomputing, it ran at 28.5 s a
# step, 73.8 GiB peak (bench/bench_wan22.py, bench/NOTES.md "Wan2.2 on an H100"). Two-expert models keep them only
# on GPUs of at least this much memory (an H200's 139 GiB).
KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB = 120


def keeps_attention(gradient_checkpointing: bool, low_memory: bool, num_experts: int, gpu_gib: float | None) -> bool:
    """train.py's default for keep_attention: checkpointed blocks keep attention outputs unless memory is short
    (the low-memory path, or a two-expert model on a GPU under KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB; gpu_gib None: CPU)."""
    if not gradient_checkpointing or low_memory:
        return False
    return num_experts == 1 or gpu_gib is None or gpu_gib >= KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB


# The attention operators whose outputs selective checkpointing keeps: ours (attention.py) and PyTorch SDPA's kernels.
ATTENTION_OPS = {torch.ops.magicid.flash_attention.default, torch.ops.aten._scaled_dot_product_cudnn_attention.default,
                 torch.ops.aten._scaled_dot_product_flash_attention.default,
                 torch.ops.aten._scaled_dot_product_efficient_attention.default,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}


def _save_attention(ctx, op, *args, **kwargs):
    if op in ATTENTION_OPS:
        return torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE
    return torch.utils.checkpoint.CheckpointPolicy.PREFER_RECOMPUTE


# torch.utils.checkpoint's context_fn for selective checkpointing: save attention, recompute everything else
keep_attention_outputs = functools.partial(torch.utils.checkpoint.create_selective_checkpoint_contexts, _save_attention)


class SpeedSwitches:
    """The speed and memory methods of model.VideoModel; they use its `pipe`, `transformer`, `blocks`, `vae`,
    `device`, `low_memory`, `_prompt_cache` and `_run_text_encoder`."""

    def enable_speedups(self, compile_blocks: bool = False, gradient_checkpointing: bool = False,
                        attention_backend: str | None = None, checkpoint_blocks: int | None = None,
                        keep_attention: bool = False, offload_blocks: int = 0) -> None:
        """torch.compile each transformer block, checkpoint activations, or pick the attention kernel.

        checkpoint_blocks: with gradient_checkpointing, recompute only the first N blocks (None: all).
        Each block left out saves its recomputation (~1/30 of a forward) and keeps its activations.
        keep_attention: checkpointed blocks keep their attention outputs (O and lse, ~86 MB a block for a 33-frame
        pair) and recompute only projections, norms and FFN: the backward reruns no attention forward.
        offload_blocks: K blocks neither kept nor recomputed: their saved activations wait in host memory
        (offload.py). Of the first N + K blocks (all of them when checkpoint_blocks is None), K evenly spread are
        offloaded and the rest checkpointed, so each block's copy has the forward of the blocks after it to run
        under. Free while the link keeps up: 4-8 blocks of a 33-frame DPO pair on an H100 (bench/NOTES.md).
        attention_backend: "fa4", "sdpa" or a diffusers registry name (None: leave it; cli.py picks fa4 on GPUs).
        """
        blocks = list(self.blocks)
        first = len(blocks) if checkpoint_blocks is None else min(len(blocks), checkpoint_blocks + offload_blocks)
        if offload_blocks and not gradient_checkpointing:
            raise ValueError("offload_blocks works with gradient checkpointing (--grad-checkpointing)")
        if offload_blocks < 0 or (offload_blocks and (checkpoint_blocks or 0) + offload_blocks > len(blocks)):
            raise ValueError(f"offload_blocks {offload_blocks} (+ checkpoint_blocks {checkpoint_blocks}) must fit in "
                             f"the transformer's {len(blocks)} blocks")
        if gradient_checkpointing:
            offloaded = {round(i * first / offload_blocks) for i in range(offload_blocks)} if offload_blocks else set()
            checkpointed = set(range(first)) - offloaded
            position = {id(block): j for j, block in enumerate(blocks)}  # diffusers passes the block, not its index
            offload = ActivationOffload(self.device) if offloaded else None

            def checkpoint_whole_block(block, *args):
                return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

            def checkpoint_block_keeping_attention(block, *args):  # torch.compile traces only a module-level context_fn
                return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False,
                                                         context_fn=keep_attention_outputs)

            checkpoint_block = checkpoint_block_keeping_attention if keep_attention else checkpoint_whole_block

            if compile_blocks:  # the checkpoint inside the compiled graph, so the compiler sees what to save
                checkpoint_block = torch.compile(checkpoint_block)

            def checkpoint_some(block, *args):  # diffusers calls it for every block when grad is on
                j = position[id(block)]
                if j in offloaded:
                    with offload.saving(j):
                        out = block(*args)
                else:
                    out = checkpoint_block(block, *args) if j in checkpointed else block(*args)
                if offload is not None:  # CogVideoX blocks return (video, text) hidden states
                    offload.fetch_ahead_of(out[0] if isinstance(out, tuple) else out, j)
                return out

            self.transformer.enable_gradient_checkpointing(checkpoint_some)
            self.offload = offload
        self._set_attention(attention_backend)
        if compile_blocks:
            for block in self.blocks:
                block.compile()

    def _set_attention(self, backend: str | None) -> None:
        """"fa4" (FlashAttention-4, or PyTorch SDPA with the reason when it cannot run here), "sdpa", or a name
        from diffusers' attention registry; None leaves the attention as it is."""
        if backend == "fa4":
            reason = attention.flash_attention_4_unavailable(self.device)
            if reason is None:
                attention.use_flash_attention_4(self.transformer)
            else:
                print(f"attention: PyTorch SDPA ({reason})")
                self.transformer.reset_attention_backend()
        elif backend == "sdpa":
            self.transformer.reset_attention_backend()
        elif backend is not None:
            self.transformer.set_attention_backend(backend)

    def enable_fp8(self, fast_accumulation: bool = False) -> None:
        """Store the transformer blocks' frozen linear weights in float8_e4m3 and run their matmuls on FP8 tensor
        cores (fp8.py): half the weight memory, outputs within FP8 rounding of bf16 (bench/bench_fp8.py).
        LoRA adapters added before or after stay in their own dtype; LoRA files never hold a base weight."""
        import fp8

        reason = fp8.fp8_unsupported(self.device, self.dtype)
        if reason:
            raise ValueError(reason)
        converted, kept = fp8.convert_linears(self.blocks, fast_accumulation)
        print(f"fp8: {converted} linear layers of the transformer blocks in float8_e4m3"
              + (f", {kept} kept in bf16 (sizes not multiples of 16)" if kept else ""))

    def enable_low_memory(self) -> None:
        """Fit a 24 GiB GPU at 81×480×832 (measured: bench/NOTES.md, "Dress rehearsal"). Two things:

        - the text encoder (Wan's UMT5-XXL: 11.4 GB in bf16, more than the transformer's whole training step
          needs) waits on the CPU and visits the GPU only to encode prompts not seen before; their embeddings
          are cached, so a run that names its prompts up front (cache_prompts) moves it there once;
        - the VAE encodes and decodes in overlapping spatial tiles, one video at a time: an 81-frame decode
          otherwise peaks at 12 GiB. Tiles are blended at their seams, so pixels differ slightly from an untiled decode.
        """
        self.low_memory = True
        self.pipe.text_encoder.to("cpu")
        self.vae.enable_tiling()
        self.vae.enable_slicing()

    def cache_prompts(self, texts: list[str]) -> None:
        """Encode the prompts not yet in the model's prompt cache (encode_prompt reads it). Low-memory mode:
        in one visit of the text encoder to the GPU, so name a run's prompts up front."""
        new = [text for text in dict.fromkeys(texts) if text not in self._prompt_cache]
        if not new:
            return
        if self.low_memory:
            self.pipe.text_encoder.to(self.device)
        for start in range(0, len(new), 8):  # 8 prompts at a time: UMT5-XXL's attention grows with the batch
            self._prompt_cache.update(zip(new[start:start + 8], self._run_text_encoder(new[start:start + 8])))
        if self.low_memory:
            self.pipe.text_encoder.to("cpu")
            torch.cuda.empty_cache()  # hand its 11 GB back, not only to torch's cache
