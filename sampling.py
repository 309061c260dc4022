"""Preference data for MagicID: static videos and hybrid pair selection over the scored repository.

MagicID (Li et al., ICCV 2025, §3.2-3.3) learns from pairs (x_w, x_l) that share one prompt c.
The pairs come from a repository of videos, each scored with an ID reward r_id and a dynamic
reward r_dyn (rewards.py): K videos per prompt from the initial model, K from the identity-stage
(fine-tuned) model, and the static videos (a reference photo repeated over F frames). The repository
itself, on disk, is repository.Repository.

  Identity pairs (static-first): teach identity while motion is held fixed,
      r_id(w) − r_id(l) ≥ δ_id    and    |r_dyn(w) − r_dyn(l)| ≤ τ_dyn.
      Static videos take part and may pair with any prompt.
  Dynamic pairs (frontier-based): among one prompt's generated videos, the winner lies on the
      Pareto frontier of (r_id, r_dyn) and dominates the loser by a margin in at least one reward
      while not being worse in the other:
      r_id(w) − r_id(l) ≥ δ_id/2   or   r_dyn(w) − r_dyn(l) ≥ ρ · r_dyn(l)   (ρ = 20 %, ours).
      Pairs are ranked by the normalized gap Δr_id / spread(r_id) + Δr_dyn / spread(r_dyn) and
      the top N are kept, each video used at most m times (m = 2, ours).
  With a prompt judge (r_sem, rewards.py; our reading of the paper, which scores every video with a
      VLM and reports that the semantic reward raises both motion and CLIP-T, Table 3, but does not
      spell out how it enters the selection): generated videos below a floor, r_sem < sem_floor,
      take part in no pair of either rule, and r_sem is a third objective of the dynamic rule: the
      frontier is over (r_id, r_dyn, r_sem), the loser is dominated in all three (the margins stay on
      r_id and r_dyn) and the ranking adds Δr_sem / spread(r_sem).

Exports: static_video, crop_around_face, pareto_frontier, select_identity_pairs, select_dynamic_pairs,
Selection, summary.
"""
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SOURCES = ("static", "initial", "finetuned")
EPS = 1e-9  # thresholds hold up to float rounding: 0.9 − 0.8 counts as a gap of 0.1


# ----------------------------------------------------------------------------- static videos

def static_video(image, frames, height, width, jitter=0.1, rng=None):
    """A reference photo as a video with zero motion: the same frame repeated `frames` times.

    image: uint8 [H_in, W_in, 3] -> video: uint8 [frames, height, width, 3].
    The photo is center-cropped to the output aspect (cover, never stretched: a portrait photo
    makes a landscape video by cropping), then resized. `jitter` (ours) draws one light crop per
    video, the same for every frame: zoom in by up to `jitter` of the side, shift the crop centre
    by up to `jitter`/2 of its size, mirror with probability 1/2. jitter=0 is the plain crop.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"static_video wants an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    if jitter > 0 and rng is None:
        raise ValueError("static_video: jitter > 0 needs rng=np.random.Generator so the crops are reproducible")
    h_in, w_in = image.shape[:2]
    crop_h, crop_w = _cover_crop(h_in, w_in, height / width)
    cy, cx, flip = h_in / 2, w_in / 2, False
    if jitter > 0:
        scale = rng.uniform(1 - jitter, 1)
        crop_h, crop_w = crop_h * scale, crop_w * scale
        cy += rng.uniform(-jitter / 2, jitter / 2) * crop_h
        cx += rng.uniform(-jitter / 2, jitter / 2) * crop_w
        flip = bool(rng.random() < 0.5)
    top = float(np.clip(cy - crop_h / 2, 0, h_in - crop_h))  # keep the crop inside the photo
    left = float(np.clip(cx - crop_w / 2, 0, w_in - crop_w))
    frame = Image.fromarray(image).resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
    frame = np.asarray(frame)                             # [height, width, 3]
    if flip:
        frame = frame[:, ::-1]
    return np.repeat(frame[None], frames, axis=0)        # [frames, height, width, 3]


def _cover_crop(h_in, w_in, aspect):
    """The largest (crop_h, crop_w) with crop_h / crop_w = aspect that fits in h_in × w_in."""
    if h_in / w_in > aspect:
        return w_in * aspect, float(w_in)
    return float(h_in), h_in / aspect


def crop_around_face(image, box, aspect, face_scale=3.0):
    """Frame a photo around its face (ours): a crop of height face_scale × the face's height and
    height / width = aspect, centred on the face and shifted (then shrunk) to stay inside the photo.

    image: uint8 [H, W, 3]; box: (x0, y0, x1, y1) of the face -> uint8 [h, w, 3]. Small videos (the
    tiny preset's 128 px) otherwise show a whole-body photo's face at a size no detector finds.
    """
    h_in, w_in = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    crop_h = face_scale * (y1 - y0)
    crop_w = crop_h / aspect
    shrink = min(1.0, h_in / crop_h, w_in / crop_w)      # never larger than the photo
    crop_h, crop_w = crop_h * shrink, crop_w * shrink
    top = int(round(min(max((y0 + y1) / 2 - crop_h / 2, 0), h_in - crop_h)))
    left = int(round(min(max((x0 + x1) / 2 - crop_w / 2, 0), w_in - crop_w)))
    return image[top:top + int(round(crop_h)), left:left + int(round(crop_w))]


# ----------------------------------------------------------------------------- Pareto frontier

def pareto_frontier(points):
    """Mask of the non-dominated points, maximizing every column.

    points: [N, K] -> on_frontier: bool [N]. q dominates p when q ≥ p in every column and q > p in
    at least one; exact duplicates do not dominate each other, so both stay on the frontier.
    K = 2 is a sort and one sweep, O(N log N); other K compare all pairs, O(N² K).
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or not np.isfinite(points).all():
        raise ValueError(f"pareto_frontier wants finite points [N, K], got shape {points.shape} with NaN/inf")
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    if points.shape[1] == 2:
        return _frontier_2d(points[:, 0], points[:, 1])
    ge = (points[:, None, :] >= points[None, :, :]).all(-1)   # ge[q, p]: q ≥ p everywhere, [N, N]
    gt = (points[:, None, :] > points[None, :, :]).any(-1)    # gt[q, p]: q > p somewhere
    return ~(ge & gt).any(0)


def _frontier_2d(x, y):
    """Sweep x from high to low. Within one x value only the highest y survives; it survives
    overall when its y beats every y seen at a strictly higher x."""
    order = np.lexsort((-y, -x))                  # x descending, then y descending
    xs, ys = x[order], y[order]
    new_x = np.r_[True, xs[1:] != xs[:-1]]        # first (= highest y) of each run of equal x
    group = np.cumsum(new_x) - 1
    group_top = ys[new_x]                          # highest y of each x value, [G]
    best_before = np.r_[-np.inf, np.maximum.accumulate(group_top)[:-1]]   # best y at strictly higher x
    keep_sorted = (ys == group_top[group]) & (group_top[group] > best_before[group])
    on_frontier = np.empty_like(keep_sorted)
    on_frontier[order] = keep_sorted
    return on_frontier


# ----------------------------------------------------------------------------- pair selection

@dataclass
class Selection:
    """Pairs one rule produced. Indices point into the arrays the rule was given."""
    rule: str                                       # "identity" or "dynamic"
    pairs: list = field(default_factory=list)       # [(winner, loser)]
    prompts: list = field(default_factory=list)     # the prompt each pair trains on
    scores: list = field(default_factory=list)      # the ranking score of each pair (higher first)
    candidates: int = 0                             # candidate pairs considered
    rejected: Counter = field(default_factory=Counter)   # reason -> count (pairs, or videos where said)


def select_identity_pairs(r_id, r_dyn, prompt, source, *, delta_id=0.1, tau_dyn=2.0,
                          max_pairs=None, max_uses=None, r_sem=None, sem_floor=None):
    """Identity pairs (static-first): a clearly better ID at (nearly) the same motion.

    r_id, r_dyn: [N]; prompt: [N] ints or strings; source: [N] in SOURCES.
    Keeps (w, l) with r_id(w) − r_id(l) ≥ δ_id and |r_dyn(w) − r_dyn(l)| ≤ τ_dyn, among videos of
    one prompt or pairs with a static video. The pair trains on the non-static member's prompt;
    two static videos train on the winner's caption. δ_id is on the ID encoder's scale (0.1 for
    ArcFace, METHOD.md; pass faces.ID_CALIBRATION[backend].delta_id). τ_dyn is in r_dyn's unit,
    flow px at a 256 px short side; 2.0 (ours) is a third of VBench's 6 px "moving" threshold,
    so a pair never spans still vs moving. Ranked by the ID gap when max_pairs / max_uses (default: no limit) cut.
    r_sem [N] (None: no prompt judge) with sem_floor: a generated video with r_sem < sem_floor is left
    out; a static video never is (it shows the person by construction, and its pairs train on the
    generated member's prompt), so it may have NaN (unscored).
    """
    r_id, r_dyn, _, prompt, static, eligible, sel = _prepare("identity", r_id, r_dyn, prompt, source, r_sem, sem_floor)
    i, j = np.triu_indices(len(r_id), k=1)               # every unordered pair once
    i, j = i[eligible[i] & eligible[j]], j[eligible[i] & eligible[j]]
    w = np.where(r_id[i] >= r_id[j], i, j)                # the higher ID wins
    l = np.where(r_id[i] >= r_id[j], j, i)
    id_gap, dyn_gap = r_id[w] - r_id[l], np.abs(r_dyn[w] - r_dyn[l])
    reasons = [("different prompts", ~((prompt[w] == prompt[l]) | static[w] | static[l])),
               ("id gap < δ_id", (id_gap < delta_id - EPS) | (id_gap <= 0)),
               ("dyn gap > τ_dyn", dyn_gap > tau_dyn + EPS)]
    ok = _count_rejections(sel, reasons, len(w))
    pair_prompt = np.where(static[l], prompt[w], prompt[l])   # the non-static member's, else the winner's
    _keep_top(sel, w[ok], l[ok], id_gap[ok], pair_prompt[ok], max_pairs, max_uses)
    return sel


def select_dynamic_pairs(r_id, r_dyn, prompt, source, *, delta_id=0.1, dyn_margin=0.2,
                         max_pairs=None, max_uses=2, r_sem=None, sem_floor=None, id_tolerance=0.0):
    """Dynamic pairs (frontier-based): a frontier winner that dominates the loser by a margin.

    Same inputs as select_identity_pairs. Per prompt, over its generated (non-static) videos:
    winner w on the Pareto frontier of the rewards R = (r_id, r_dyn), or (r_id, r_dyn, r_sem) when
    r_sem is given; loser l with r(w) ≥ r(l) for every r in R and [r_id(w) − r_id(l) ≥ δ_id/2 or
    r_dyn(w) − r_dyn(l) ≥ dyn_margin·r_dyn(l) with a positive gap]. Score = Σ_{r∈R} Δr / spread(r),
    the spreads (max − min) taken over all eligible generated videos so scores compare across
    prompts; the best pairs are kept greedily, at most max_pairs (None: no cap), each video in
    ≤ max_uses pairs. sem_floor drops videos as in select_identity_pairs.
    id_tolerance (ours, an investigation switch; 0 is the rule above): the winner may trail the loser's r_id by up
    to this much, so a moving face can beat a still face the identity model draws a little better
    (toyworld/README.md's positive control for claim 2).
    """
    r_id, r_dyn, r_sem, prompt, static, eligible, sel = _prepare("dynamic", r_id, r_dyn, prompt, source,
                                                                 r_sem, sem_floor)
    rewards = [r_id, r_dyn] if r_sem is None else [r_id, r_dyn, r_sem]   # the objectives, each [N]
    sel.rejected["static video, not a dynamic candidate (videos)"] += int(static.sum())
    pool = np.flatnonzero(eligible & ~static)
    spreads = [np.ptp(r[pool]) if len(pool) and np.ptp(r[pool]) > 0 else 1.0 for r in rewards]
    groups = {}
    for k in pool:
        groups.setdefault(prompt[k], []).append(k)
    allowed = np.zeros((len(rewards), 1))            # how far the winner may trail, per reward: [|R|, 1]
    allowed[0] = id_tolerance
    ws, ls = [], []
    for members in groups.values():
        members = np.array(members)
        front = pareto_frontier(np.stack([r[members] for r in rewards], 1))   # [n, |R|] -> [n]
        a, b = np.meshgrid(np.arange(len(members)), np.arange(len(members)), indexing="ij")
        a, b = a[a != b], b[a != b]                      # ordered (winner, loser) candidates
        w, l = members[a], members[b]
        gaps = np.stack([r[w] - r[l] for r in rewards])  # [|R|, candidates]
        id_gap, dyn_gap = gaps[0], gaps[1]
        margin = (id_gap >= delta_id / 2 - EPS) | ((dyn_gap > 0) & (dyn_gap >= dyn_margin * r_dyn[l] - EPS))
        reasons = [("winner off the frontier", ~front[a]),
                   ("loser not dominated", (gaps < -allowed).any(0)),
                   ("gap below margin", ~margin)]
        ok = _count_rejections(sel, reasons, len(w))
        ws.append(w[ok])
        ls.append(l[ok])
    w, l = (np.concatenate(ws), np.concatenate(ls)) if ws else (np.array([], int), np.array([], int))
    score = sum((r[w] - r[l]) / spread for r, spread in zip(rewards, spreads))
    _keep_top(sel, w, l, score, prompt[w], max_pairs, max_uses)
    return sel


def summary(*selections):
    """How many pairs each rule made and why the other candidates were turned down (JSON-able)."""
    return {s.rule: {"pairs": len(s.pairs), "candidates": s.candidates, "rejected": dict(s.rejected)}
            for s in selections}


def _prepare(rule, r_id, r_dyn, prompt, source, r_sem, sem_floor):
    """Arrays in (r_sem None without a prompt judge), plus the videos allowed to take part."""
    r_id, r_dyn = np.asarray(r_id, dtype=float), np.asarray(r_dyn, dtype=float)   # [N]
    prompt, source = np.asarray(prompt, dtype=object), np.asarray(source, dtype=object)
    if not (len(r_id) == len(r_dyn) == len(prompt) == len(source)):
        raise ValueError("r_id, r_dyn, prompt and source must have one entry per video")
    if not set(source) <= set(SOURCES):
        raise ValueError(f"source must be in {SOURCES}, got {sorted(set(source) - set(SOURCES))}")
    sel, static = Selection(rule), source == "static"
    eligible = np.ones(len(r_id), dtype=bool)
    if r_sem is None:
        if sem_floor is not None:
            raise ValueError("sem_floor needs r_sem: score the videos with a prompt judge, or leave the floor out")
        return r_id, r_dyn, None, prompt, static, eligible, sel
    r_sem = np.asarray(r_sem, dtype=float)             # [N]
    if len(r_sem) != len(r_id):
        raise ValueError(f"r_sem must hold one score per video: {len(r_sem)} for {len(r_id)} videos")
    unscored = ~static & ~np.isfinite(r_sem)
    if unscored.any():
        raise ValueError(f"r_sem is NaN for {int(unscored.sum())} generated videos: score every generated video "
                         f"with the same prompt judge, or pass r_sem=None")
    if sem_floor is not None:
        eligible = static | (r_sem >= sem_floor)
        sel.rejected["r_sem < floor (videos)"] += int((~eligible).sum())
    return r_id, r_dyn, r_sem, prompt, static, eligible, sel


def _count_rejections(sel, reasons, n):
    """Charge each candidate to the first rule it fails; return the mask of those that pass all."""
    sel.candidates += n
    ok = np.ones(n, dtype=bool)
    for reason, fails in reasons:
        sel.rejected[reason] += int((ok & fails).sum())
        ok &= ~fails
    return ok


def _keep_top(sel, w, l, score, pair_prompt, max_pairs, max_uses):
    """Greedy from the highest score: skip a pair once the cap is hit or a member is used up."""
    uses = Counter()
    for k in np.argsort(-score, kind="stable"):
        if max_pairs is not None and len(sel.pairs) >= max_pairs:
            sel.rejected["top-N cut"] += 1
        elif max_uses is not None and max(uses[w[k]], uses[l[k]]) >= max_uses:
            sel.rejected["use limit"] += 1
        else:
            uses[w[k]] += 1
            uses[l[k]] += 1
            sel.pairs.append((int(w[k]), int(l[k])))
            sel.prompts.append(pair_prompt[k])
            sel.scores.append(float(score[k]))
