"""fp8.py — the frozen base weights of the video transformer in FP8: matmuls on the H100's FP8 tensor cores.

Every frozen linear layer y = x Wᵀ + b of the transformer blocks (attention projections, feed-forward) is
stored once as float8_e4m3 with one scale per output row, and its input is quantized per token at each call:

    s_W[n] = max_k |W[n, k]| / 448        W_q = round_e4m3(W / s_W)          W: [N, K],  s_W: [N]   (once)
    s_x[m] = max_k |x[m, k]| / 448        x_q = round_e4m3(x / s_x)          x: [M, K],  s_x: [M]   (every call)
    y[m, n] = s_x[m] · s_W[n] · Σ_k x_q[m, k] · W_q[n, k]  +  b[n]           one torch._scaled_mm, bf16 out

448 is e4m3's largest value, so each row uses the format's whole range; e4m3 keeps 3 mantissa bits, so every
quantized entry is within 2⁻⁴ of its value (relative; absolute 2⁻¹⁰·s below 2⁻⁶·s, the subnormals). Rows,
not one scale per tensor: a token's activations and a weight row each get their own range, so one outlier
token does not flatten the others to zero.

Backward. The LoRA adapters are the only trainable weights, so a frozen layer owes its input a gradient and
nothing else: dx = dy · W. That product contracts over N, across the rows s_W scales, so s_W cannot be
factored out of it the way it is in the forward. We dequantize, W_deq = s_W ⊙ W_q in bf16, and multiply in
bf16: dx is then the exact gradient (to bf16 rounding) of the function the forward computed, x ↦ x_q W_qᵀ,
with the activation's rounding passed straight through, as every FP8 training recipe does. The alternative,
a second FP8 copy of W scaled per input column and dy quantized per row, would run the backward matmul on FP8
tensor cores too, but it costs another byte per weight (1.4 GB on Wan2.1-1.3B, 14 GB on 14B) and puts a second
rounding of W and one of dy (≤ 2⁻⁴ each) into the only gradient that trains anything; the dequantization
reads W once per layer and backward, ~1 % of the time of the matmul it feeds at 14k tokens (memory-bound estimate).

Peft LoRA layers wrap a linear layer's module and add B·A·x to its output; FP8Linear is an nn.Linear (as
torchao's Float8Linear is), so peft wraps it like any other, before or after the conversion, and its
`compute_dtype` tells peft to build adapters in bf16 rather than in the weight's FP8. LoRA files hold the
adapters only (peft's state dict of the adapter), never a base weight.

torch.compile traces the autograd.Function below whole, forward and backward (tests/test_fp8.py compiles a block
with fullgraph=True): every operation in it is an ATen operator the compiler knows, torch._scaled_mm included,
so the activation's quantization fuses into the block's kernels. A torch.library.custom_op, which attention.py
needs for a kernel from outside torch, would hide that quantization from the compiler.

Exports: FP8Linear, convert_linears, fp8_linear, quantize_rows, fp8_unsupported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
_SMALLEST_AMAX = 1e-12            # an all-zero row gets this, not a scale of 0 (x / 0 = NaN)


def fp8_unsupported(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """None when FP8 matmuls can run for a transformer in `dtype` on `device`, else why not (for the user)."""
    device = torch.device(device)
    if dtype != torch.bfloat16:
        return f"--fp8 needs the bfloat16 transformer (FP8 matmuls write bf16); this one is {dtype}: add --bf16"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        return f"--fp8 needs an SM89+ GPU (Ada, Hopper, Blackwell) for FP8 tensor cores; this one is SM{major}{minor}"
    return None


def convert_linears(root: nn.Module, fast_accumulation: bool = False) -> tuple[int, int]:
    """Replace every frozen nn.Linear under `root` by an FP8Linear, in place; returns (converted, kept in bf16).

    A layer inside a peft LoRA wrapper is its `base_layer`, which is replaced there; the adapters' own
    lora_A / lora_B layers are never touched. A layer whose sizes are not multiples of 16 (what the FP8
    kernels take) or whose weight trains stays as it is, and is counted as kept.
    fast_accumulation: the H100's faster FP8 accumulation, without cuBLAS's periodic promotion to fp32
    (torchao's default for the forward matmul); off: more accurate at K = 8960 (bench/bench_fp8.py measures both).
    """
    converted = kept = 0
    for name, module in list(root.named_modules()):
        if type(module) is not nn.Linear or "lora_" in name:
            continue
        if module.weight.requires_grad or module.in_features % 16 or module.out_features % 16:
            kept += 1
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name), child, FP8Linear(module, fast_accumulation))
        converted += 1
    return converted, kept


class FP8Linear(nn.Linear):
    """A frozen linear layer with its weight in float8_e4m3 (W_q: [N, K]) and one fp32 scale per row (s_W: [N])."""

    def __init__(self, linear: nn.Linear, fast_accumulation: bool = False):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a full-precision weight first
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight_q, weight_scale = quantize_rows(linear.weight.detach())           # [N, K] e4m3, [N, 1] fp32
        self.weight = nn.Parameter(weight_q, requires_grad=False)
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1))        # [1, N]: _scaled_mm's scale_b
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)
        # peft builds a LoRA adapter in its base layer's dtype, read from this attribute when present:
        # bf16 like the rest of the model, not the weight's e4m3.
        self.compute_dtype = torch.bfloat16
        self.fast_accumulation = fast_accumulation

    def forward(self, x: Tensor) -> Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, self.bias, self.fast_accumulation)


def fp8_linear(x: Tensor, weight_q: Tensor, weight_scale: Tensor, bias: Tensor | None,
               fast_accumulation: bool = False) -> Tensor:
    """y = x_q W_qᵀ · s_x s_W + b (the module docstring): x [..., K] -> y [..., N] bf16; grad flows to x only."""
    out = _FP8Matmul.apply(x.reshape(-1, x.shape[-1]), weight_q, weight_scale, bias, fast_accumulation)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """t [R, C] -> (t_q [R, C] float8_e4m3, s [R, 1] fp32) with t ≈ s · t_q and each row's max at ±448."""
    scale = t.abs().amax(dim=1, keepdim=True).float().clamp(min=_SMALLEST_AMAX) / E4M3_MAX   # [R, 1]
    # The clamp catches a value that lands a hair above 448 after the division: e4m3 has no infinity, and
    # casting a value past its range gives NaN.
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class _FP8Matmul(torch.autograd.Function):
    """x [M, K] (any float dtype) -> y [M, N] bf16; the backward returns dx = dy · W_deq (module docstring)."""

    @staticmethod
    def forward(ctx, x, weight_q, weight_scale, bias, fast_accumulation):
        x_q, x_scale = quantize_rows(x)                                                # [M, K] e4m3, [M, 1]
        # _scaled_mm wants mat1 row-major and mat2 column-major: W_q [N, K] row-major, transposed, is that.
        out = torch._scaled_mm(x_q.contiguous(), weight_q.t(), scale_a=x_scale, scale_b=weight_scale, bias=bias,
                               out_dtype=torch.bfloat16, use_fast_accum=fast_accumulation)   # [M, N]
        ctx.save_for_backward(weight_q, weight_scale)
        ctx.input_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight_q, weight_scale = ctx.saved_tensors
        weight = (weight_q.float() * weight_scale.t()).to(torch.bfloat16)             # W_deq = s_W ⊙ W_q: [N, K]
        grad_x = (grad_out.to(torch.bfloat16) @ weight).to(ctx.input_dtype)             # [M, K]
        return grad_x, None, None, None, None
