"""attention.py — FlashAttention-4 as a PyTorch operator, behind diffusers' attention dispatch.

    O = softmax(S) V,   S = scale · Q Kᵀ,   lse_i = log Σ_j exp(S_ij)                  forward
    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − rowsum(dO ∘ O)),   dQ = scale · dS K,   dK = scale · dSᵀ Q   backward

with P = exp(S − lse) the attention probabilities (Q, K, V, O: [batch, tokens, heads, head_dim]; lse, P's row
normaliser: [batch, heads, tokens]). The forward keeps only O and lse, the backward rebuilds P from them: that is
FlashAttention's whole trick, and every kernel of that family (FA2, FA3, cuDNN, FA4) computes exactly these lines.

Why here: attention is ~55 % of a DPO step's GPU time at 14k tokens (bench/NOTES.md). flash-attn-4 (PyPI,
CuTe-DSL kernels JIT-compiled for SM90/SM100, no CUDA build) is 10-20 % faster than cuDNN's SDPA on an H100 at
Wan2.1's shapes. Two things make it usable inside train.py:

- it enters as one custom operator, `magicid::flash_attention` (torch.library.custom_op, with a fake for shapes and
  an autograd formula that calls the FA4 backward), so torch.compile keeps each transformer block one graph with
  attention inside it; a Python call behind torch.compiler.disable would break every block's graph in two (issue 16
  measured that: the graph breaks ate the kernel's gain);
- diffusers already dispatches attention by backend name, and its "flash_4_hub" backend calls a kernel from a slot
  that the `kernels` package would fill by downloading code from the Hub. We never run downloaded code and have no
  network; we fill that slot with this operator (from the pip package) and point the model's attention modules at
  the backend. diffusers' own layout handling and checks stay in the path.

On the CPU (tests, or a GPU without FA4) the same operator runs the equations above in plain torch: slow, exact,
and what the tests hold the wiring against.

Exports: flash_attention, flash_attention_4_unavailable, use_flash_attention_4.
"""

from __future__ import annotations

import torch
from torch import Tensor


def flash_attention_4_unavailable(device: torch.device | str) -> str | None:
    """None when FA4 can run on `device`, else the reason it cannot (printed by the caller on fallback)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FlashAttention-4 runs on CUDA GPUs, not on {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return f"FlashAttention-4 needs an SM90+ GPU (Hopper, Blackwell); this one is SM{major}{minor}"
    try:
        import flash_attn.cute.interface  # noqa: F401
    except ImportError as error:
        return f"flash-attn-4 is not installed ({error}); pip install -r requirements-gpu.txt"
    return None


@torch.library.custom_op("magicid::flash_attention", mutates_args=())
def _attention_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """O [B, S, H, D] and lse [B, H, S] (float32) of softmax(scale · Q Kᵀ) V."""
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True)
        return out.contiguous(), lse.contiguous()
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale   # [B, H, S_q, S_k]
    lse = scores.logsumexp(dim=-1)                                            # [B, H, S_q]
    probs = (scores - lse[..., None]).exp()
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.float())
    return out.to(q.dtype).contiguous(), lse


@_attention_forward.register_fake
def _(q, k, v, scale):
    batch, tokens, heads, _ = q.shape
    return q.new_empty((batch, tokens, heads, v.shape[-1])), q.new_empty((batch, heads, tokens), dtype=torch.float32)


@torch.library.custom_op("magicid::flash_attention_backward", mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """dQ, dK, dV from dO and the forward's O and lse (the module docstring's backward lines)."""
    if q.is_cuda:
        from flash_attn.cute.interface import _flash_attn_bwd

        dq, dk, dv = _flash_attn_bwd(q, k, v, out, grad_out.contiguous(), lse, softmax_scale=scale)[:3]
        return dq.contiguous(), dk.contiguous(), dv.contiguous()
    q32, k32, v32, o32, do32 = (t.float() for t in (q, k, v, out, grad_out))
    probs = (torch.einsum("bqhd,bkhd->bhqk", q32, k32) * scale - lse[..., None]).exp()   # P, rebuilt from lse
    grad_v = torch.einsum("bhqk,bqhd->bkhd", probs, do32)
    grad_probs = torch.einsum("bqhd,bkhd->bhqk", do32, v32)
    row_dot = (do32 * o32).sum(-1).transpose(1, 2)[..., None]                         # rowsum(dO ∘ O): [B, H, S, 1]
    grad_scores = probs * (grad_probs - row_dot)
    grad_q = torch.einsum("bhqk,bkhd->bqhd", grad_scores, k32) * scale
    grad_k = torch.einsum("bhqk,bqhd->bkhd", grad_scores, q32) * scale
    return tuple(g.to(t.dtype).contiguous() for g, t in ((grad_q, q), (grad_k, k), (grad_v, v)))


@_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the kernels return


def _save_for_backward(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    # lse is an output for the backward's sake only: nothing downstream differentiates it, so grad_lse is unused
    q, k, v, out, lse = ctx.saved_tensors
    return (*_attention_backward(grad_out, q, k, v, out, lse, ctx.scale), None)


_attention_forward.register_autograd(_backward, setup_context=_save_for_backward)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float | None = None,
                    causal: bool = False) -> Tensor:
    """softmax(scale · Q Kᵀ) V for q, k, v [B, S, H, D]; the signature diffusers' flash_4 backend calls."""
    if causal:
        raise ValueError("magicid's FlashAttention-4 operator is non-causal (video diffusion attends everywhere)")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _attention_forward(q, k, v, scale)[0]


def use_flash_attention_4(transformer: torch.nn.Module) -> None:
    """Route every attention module of a diffusers transformer through `flash_attention`.

    This is what transformer.set_attention_backend("flash_4_hub") does, minus its Hub download: the backend's
    kernel slot gets our operator instead, so diffusers' dispatch (layout, checks) is unchanged.
    """
    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    backend = AttentionBackendName.FLASH_4_HUB
    _HUB_KERNELS_REGISTRY[backend].kernel_fn = flash_attention
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
