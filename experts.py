"""experts.py — Wan2.2's quirks behind VideoModel: two experts picked by the timestep, and per-token timesteps.

Wan2.2-T2V-A14B denoises with two transformers of one architecture: `transformer` (the high-noise expert) runs at
timesteps t >= boundary = boundary_ratio · num_train_timesteps (0.875 · 1000 = 875), `transformer_2` (low noise)
below it. That is WanPipeline.__call__'s rule at every sampling step, and `expert_of` is that rule for training:

    expert(t) = 0 (transformer)    if t >= boundary
                1 (transformer_2)  otherwise                      (one expert, boundary None: always 0)

Wan2.2-TI2V-5B has one transformer but feeds it one timestep per token (expand_timesteps): t: [B] becomes
[B, f·(h/2)·(w/2)], the pipeline's `(mask[0][0][:, ::2, ::2] * t).flatten()` with a mask of ones (text-to-video).

Choices (ours), so that train.py and dpo.py stay backbone-blind:
- Every item trains the expert of its timestep, so each expert learns from the timesteps of its own range, in the
  proportion the timestep sampler draws them (with the A14B's shift, most fall in the high-noise range). Each
  expert has its own trainable LoRA and its own frozen reference adapter (lora.py adds them to every expert).
- One AdamW over both experts' LoRAs (train.py builds one optimizer from lora_parameters): a step's gradient is zero
  on the expert it did not run, and Adam's momentum still moves that expert a little, as in any mixture of experts
  trained with Adam. Every trainable LoRA weight of a two-expert model carries a gradient tensor from the start
  (zeros), so a resumed run and one that never stopped step exactly the same parameters.
- `--model wan2.2-14b:high` (or `:low`) trains one expert only: timesteps are drawn from the shifted density
  truncated to that expert's range, only its LoRA trains; the other expert's file is written with B = 0 (no
  change), so every loader still finds both files.
- Memory: both 14B experts in bf16 (2 × 28 GB) and their activations do not fit one 80 GB GPU. ExpertPlacement keeps
  the running expert's frozen weights on the GPU and the other's in pinned host memory (packed_host_copies: packed in
  2^30-byte chunks, ~ the weights' own size); the host copy is made once
  and the weights never change, so evicting an expert copies nothing back. LoRA weights (trainable and reference)
  and the optimizer's state are small and stay on the GPU. On a CPU the placement is bookkeeping only.
- A step moves an expert at most once when its items run grouped by expert, the resident one first: train.py
  runs a step's items in its own order, so `order_items` is the hook its loop calls with each item's draw seed.

Exports: WanExperts (VideoModel's expert half), ExpertPlacement, packed_host_copies, split_expert_choice, EXPERT_NAMES.
"""

from __future__ import annotations

import torch

EXPERT_NAMES = ("high", "low")  # expert 0 = `transformer` (high noise), 1 = `transformer_2` (low noise)


def split_expert_choice(name: str) -> tuple[str, tuple[int, ...] | None]:
    """"wan2.2-14b:low" -> ("wan2.2-14b", (1,)); a name without ":high"/":low" -> (name, None: every expert)."""
    base, _, suffix = name.rpartition(":")
    if base and suffix in EXPERT_NAMES:
        return base, (EXPERT_NAMES.index(suffix),)
    return name, None


def packed_host_copies(tensors, chunk_bytes: int = 1 << 30, align: int = 512, pin: bool = True) -> list[torch.Tensor]:
    """Host copies of `tensors` (any devices), as views into byte buffers of exactly chunk_bytes each, pinned.

    Why not `t.to("cpu").pin_memory()` per tensor: torch's pinned-memory allocator rounds every allocation up to a
    power of two, so an A14B expert's 28.6 GB, copied tensor by tensor, holds ~40.8 GiB of page-locked host memory
    (both experts: 82 of the machine's 128 GiB; bench/bench_wan22.py's host_after_build). Chunks of 2^30 bytes round
    to themselves; only the last one's tail is unused. Tensors start at multiples of `align` bytes (any dtype's
    element size divides it, and DMA likes it); one larger than a chunk gets its own allocation. pin=False: the
    same packing in pageable memory (what a CPU, where nothing can be pinned, tests)."""
    copies, chunk, used = [], None, chunk_bytes
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if nbytes > chunk_bytes:
            copy = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
        else:
            start = -(-used // align) * align
            if chunk is None or start + nbytes > chunk_bytes:
                chunk, start = torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=pin), 0
            used = start + nbytes
            copy = chunk[start:used].view(t.dtype).view(t.shape)
        copies.append(copy.copy_(t.detach()))
    return copies


class ExpertPlacement:
    """Which expert's frozen weights are on the compute device; the others' point at their pinned host copy."""

    def __init__(self, transformers: list, device: torch.device):
        self.transformers, self.device = transformers, device
        self.resident: int | None = None  # the expert on the device (None: not decided yet)
        self.switches = 0                 # how many times an expert was brought in: the cost measured on the GPU
        self.active = device.type == "cuda" and len(transformers) > 1
        self._host: list[dict] = []
        if self.active:  # only the frozen base weights travel; LoRA weights ("lora_" in the name) stay put
            for transformer in transformers:  # VideoModel.from_pretrained left expert 0 on the GPU, the rest on the host
                frozen = list(self._frozen(transformer))
                self._host.append(dict(zip(map(id, frozen), packed_host_copies([t.data for t in frozen]))))
            for other in range(1, len(transformers)):
                for t in self._frozen(transformers[other]):
                    t.data = self._host[other][id(t)]
            self.resident = 0
        if len(transformers) > 1:  # whoever calls an expert (model.predict, the stock pipeline's loop) places it first
            for expert, transformer in enumerate(transformers):
                transformer.register_forward_pre_hook(lambda module, args, expert=expert: self.place(expert))

    def place(self, expert: int) -> None:
        if self.resident == expert:
            return
        self.switches += self.resident is not None
        if self.active:
            for other, transformer in enumerate(self.transformers):
                if other != expert:
                    for t in self._frozen(transformer):  # nothing to copy back: the weights never change
                        t.data = self._host[other][id(t)]
            for t in self._frozen(self.transformers[expert]):
                t.data = self._host[expert][id(t)].to(self.device, non_blocking=True)
        self.resident = expert

    @staticmethod
    def _frozen(transformer):
        yield from (p for name, p in transformer.named_parameters() if "lora_" not in name)
        yield from transformer.buffers()


class WanExperts:
    """The expert methods of model.VideoModel; they use its `pipe`, `transformer`, `device`."""

    def _init_experts(self, pipe, trained: tuple[int, ...] | None) -> None:
        self.transformers = [pipe.transformer] + ([pipe.transformer_2] if getattr(pipe, "transformer_2", None) else [])
        ratio = getattr(pipe.config, "boundary_ratio", None) if len(self.transformers) > 1 else None
        self.boundary = None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps
        self.expand_timesteps = bool(getattr(pipe.config, "expand_timesteps", False))
        if trained is not None and len(self.transformers) == 1:
            raise ValueError(f"{self.name!r} has one transformer: ':high' / ':low' name an expert of Wan2.2-A14B")
        self.trained_experts = trained or tuple(range(len(self.transformers)))
        self.placement = ExpertPlacement(self.transformers, self.device)

    def expert_of(self, t: torch.Tensor) -> list[int]:
        """t: [B] -> the expert of each row, WanPipeline's rule (t >= boundary: transformer; else transformer_2).
        Two experts read t on the host: the choice is control flow."""
        if self.boundary is None:
            return [0] * len(t)
        return [0 if value >= self.boundary else 1 for value in t.tolist()]

    def order_items(self, items, draw_seed) -> list:
        """A step's items grouped by expert, the one already on the GPU first: the step moves at most once.

        draw_seed(item) is the seed of the torch.Generator whose first draw is the item's timestep (train.py's
        losses draw t first); sample_timesteps replays that draw on the CPU. The order within a group is kept.
        """
        items = list(items)
        if len(self.transformers) == 1:
            return items
        experts = {item: self.expert_of(self.sample_timesteps(1, torch.Generator().manual_seed(draw_seed(item))))[0]
                   for item in items}
        first = self.placement.resident if self.placement.resident is not None else experts[items[0]]
        return sorted(items, key=lambda item: experts[item] != first)

    def _training_range(self) -> tuple[float, float] | None:
        """Training one expert: the range of u ~ U(0, 1) whose shifted σ = s·u / (1 + (s − 1)·u) falls in its
        timesteps (σ ↦ u inverts the shift), with the t bounds to clamp rounding into; None: every expert trains."""
        if len(self.trained_experts) == len(self.transformers):
            return None
        shift = float(self.pipe.scheduler.config.get("flow_shift") or self.pipe.scheduler.config.get("shift") or 1.0)
        sigma = self.boundary / 1000
        u_boundary = sigma / (shift - (shift - 1) * sigma)
        return (u_boundary, 1.0) if self.trained_experts == (0,) else (0.0, u_boundary)

    def _clamp_to_trained_expert(self, t: torch.Tensor) -> torch.Tensor:
        """t [n] into the trained expert's range: float rounding at u's boundary must not hand an item to the other."""
        if self.trained_experts == (0,):
            return t.clamp(min=self.boundary)
        return t.clamp(max=torch.nextafter(torch.tensor(self.boundary), torch.tensor(0.0)).item())

    def _wan_forward(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Rows grouped by expert, each group through its expert once: [B, C, F, H, W] -> [B, C, F, H, W] (fp32)."""
        experts = self.expert_of(t)
        if len(set(experts)) == 1:
            return self._run_expert(experts[0], x_t, t, text_emb)
        out = torch.empty(x_t.shape, device=x_t.device, dtype=torch.float32)
        for expert in sorted(set(experts), key=lambda e: e != self.placement.resident):
            rows = torch.tensor([i for i, e in enumerate(experts) if e == expert], device=x_t.device)
            out[rows] = self._run_expert(expert, x_t[rows], t[rows], text_emb[rows])
        return out

    def _run_expert(self, expert: int, x_t, t, text_emb) -> torch.Tensor:
        return self.transformers[expert](hidden_states=x_t.to(self.dtype), timestep=self._timestep_input(t, x_t.shape),
                                         encoder_hidden_states=text_emb, return_dict=False)[0].float()

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: the VAE's compression times the patch (16 for Wan2.1 and
        CogVideoX, 32 for Wan2.2-5B's 16x VAE; the pipeline would round other sizes down with a warning)."""
        if self.family != "wan":
            return 16
        return max(16, self.pipe.vae_scale_factor_spatial * self.transformer.config.patch_size[-1])

    def _timestep_input(self, t: torch.Tensor, latent_shape) -> torch.Tensor:
        """t: [B] -> what the transformer takes: [B], or with expand_timesteps [B, f·(h/p)·(w/p)], one per token."""
        if not self.expand_timesteps:
            return t
        _, p_h, p_w = self.transformer.config.patch_size
        _, _, frames, height, width = latent_shape
        tokens = frames * -(-height // p_h) * -(-width // p_w)  # the pipeline's mask[:, ::2, ::2] keeps ceil(h/2)
        return t[:, None].expand(-1, tokens)

    def _each_expert(self):
        """Yields once per expert with `self.transformer` pointing at it: speedups.py's switches, per expert."""
        first = self.transformer
        try:
            for transformer in self.transformers:
                self.transformer = transformer
                yield transformer
        finally:
            self.transformer = first

    def enable_speedups(self, offload_blocks: int = 0, **switches) -> None:
        if offload_blocks and len(self.transformers) > 1:
            raise ValueError("--offload-blocks does not support two-expert models yet: leave it out")
        for _ in self._each_expert():
            super().enable_speedups(offload_blocks=offload_blocks, **switches)

    def enable_fp8(self, fast_accumulation: bool = False) -> None:
        if len(self.transformers) > 1:  # fp8.py replaces the weights the placement keeps host copies of
            raise ValueError("--fp8 does not support two-expert models yet: leave it out")
        super().enable_fp8(fast_accumulation)
