"""clip_metrics.py — the paper's CLIP columns that are not a prompt reward: T. Cons. and CLIP-I.

    T. Cons.   1/(F−1) · Σ_f cos(E(frame_f), E(frame_f+1))            consecutive frames (VBench-style)
    CLIP-I     1/(F·N) · Σ_f Σ_n cos(E(frame_f), E(photo_n))          every frame against every reference photo
with E the CLIP image embedding (the vision tower's pooled output through the projection). CLIP-T, the
text–frame cosine, is rewards.prompt_reward with a CLIP judge (judges.ClipScorer). Each metric is None
without a CLIP: evaluate.py's table then says why.

Exports: temporal_consistency, clip_image_similarity, reference_clip_embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faces import read_photo


def temporal_consistency(video: np.ndarray, clip=None) -> float | None:
    """Mean cosine between CLIP image embeddings of consecutive frames (VBench-style); None without CLIP."""
    if clip is None:
        return None
    emb = _clip_image_embeddings(list(video), clip)   # [F, D] unit
    return float((emb[1:] * emb[:-1]).sum(-1).mean())


def clip_image_similarity(video: np.ndarray, ref_clip: np.ndarray | None, clip=None) -> float | None:
    """CLIP-I: mean cosine between the CLIP image embeddings of every frame and every reference photo,
    ref_clip [N, D] unit (reference_clip_embeddings); None without CLIP."""
    if clip is None or ref_clip is None:
        return None
    return float((_clip_image_embeddings(list(video), clip) @ ref_clip.T).mean())   # [F, N] -> mean


def reference_clip_embeddings(paths: list[str], clip=None) -> np.ndarray | None:
    """The reference photos, whole (as the paper's CLIP-I compares frames to the reference images), as CLIP
    image embeddings [N, D] unit float64; None without CLIP."""
    return None if clip is None else _clip_image_embeddings([read_photo(Path(p)) for p in paths], clip)


def _clip_image_embeddings(images: list, clip) -> np.ndarray:
    """uint8 [H, W, 3] images -> CLIP image embeddings [n, D], unit rows, float64."""
    import torch

    pixels = clip.processor(images=images, return_tensors="pt")["pixel_values"].to(clip.device)
    with torch.no_grad():  # CLIP's image embedding: the pooled vision output through the projection
        pooled = clip.model.vision_model(pixel_values=pixels).pooler_output
        emb = clip.model.visual_projection(pooled).double()                # [n, D]
    return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
