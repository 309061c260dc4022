"""toyworld/claims.py — MagicID's two claims, read from a benchmark's evaluated videos.

  1. self-reconstruction kills motion:         r_dyn(identity stage) < r_dyn(base), and identity fades along a
                                                video longer than trained on (last third of r_id < first third);
  2. hybrid preference optimization restores it: r_dyn(MagicID) > r_dyn(identity stage), r_id(MagicID) ≥ r_id(it).

Each claim is read on the means, then tested two ways. Unpaired: the two models' 95 % bootstrap intervals separate.
Paired: every model is sampled on the same identities, prompts and seeds, so video by video

    Δ = mean over (identity, prompt, seed) of [ r(MagicID video) − r(identity-stage video) ]

has its own interval, free of how much each prompt moves by itself (a pan moves every model more than "stands
still" does); both unpaired intervals carry that spread, so they can overlap while nearly every pair moves the same
way. The paper's tables give means only. Fading is read per video too (identity_fade).

Exports: PAIRED_METRICS, paired_difference, identity_fade, run_statistics, check_claims.
"""

from __future__ import annotations

import numpy as np

import evaluate

PAIRED_METRICS = ("r_id", "r_dyn")   # the two claim 2 is about


def paired_difference(rows: list[dict], metric: str, baseline: str = "identity stage", variant: str = "MagicID"):
    """(mean, low, high): the 95 % bootstrap interval of `variant` − `baseline` in `metric` over the videos both
    models made from one (identity, prompt, seed); None when no video has a partner. Videos without a partner
    or without the metric are left out; two videos of one model under one key are an error (mixed runs)."""
    def key(row):
        return row.get("identity"), row["prompt"], row["seed"]

    baselines = {}
    for row in rows:
        if row["variant"] == baseline and row[metric] is not None:
            if key(row) in baselines:
                raise ValueError(f"two {baseline!r} videos for {key(row)}: rows of several runs mixed together?")
            baselines[key(row)] = row[metric]
    differences = [row[metric] - baselines[key(row)] for row in rows
                   if row["variant"] == variant and row[metric] is not None and key(row) in baselines]
    return evaluate.bootstrap_ci(differences) if differences else None


def identity_fade(rows: list[dict], variant: str = "identity stage"):
    """(mean, low, high): each `variant` video's r_id over its last third of frames minus its first third (frames
    with a face found), with the 95 % bootstrap CI: below 0 when the identity fades along the video; None when no
    video has a face in both thirds. Per video, so a drop of a few thousandths in the mean curve is not fading."""
    drops = []
    for row in rows:
        if row["variant"] != variant:
            continue
        cosine, found = np.asarray(row["id_per_frame"], float), np.asarray(row["id_found"], bool)   # [S] each
        third = len(cosine) // 3
        first, last = found[:third], found[-third:]
        if third and first.any() and last.any():
            drops.append(cosine[-third:][last].mean() - cosine[:third][first].mean())
    return evaluate.bootstrap_ci(drops) if drops else None


def run_statistics(rows: list[dict], variants: list[str]) -> tuple[dict, dict]:
    """One run's table (evaluate.summarize) and its paired MagicID − identity stage per PAIRED_METRICS."""
    return evaluate.summarize(rows, variants), {m: paired_difference(rows, m) for m in PAIRED_METRICS}


def check_claims(short: dict, long: dict | None, people: dict | None, long_frames: int,
                 paired: dict | None = None, fade: tuple | None = None) -> dict:
    """{claim: held} on summaries {model: {metric: (mean, low, high)}}: 9-frame (short), long_frames (long: None
    without the identity curve) and person-motion prompts (people: None in a protocol setup); with `paired`
    (run_statistics' second value) and `fade` (identity_fade), their intervals too. "id_curve_thirds" holds the
    mean curve's first and last thirds per model."""
    def mean(table, model, metric):
        return table[model][metric][0]

    def separated(table, lower, higher, metric):
        return table[lower][metric][2] < table[higher][metric][1]  # lower's upper bound below higher's lower bound

    claims = {
        "baseline r_dyn below base": bool(mean(short, "identity stage", "r_dyn") < mean(short, "base", "r_dyn")),
        "  (95 % CIs separate)": bool(separated(short, "identity stage", "base", "r_dyn")),
        "MagicID r_dyn above baseline": bool(mean(short, "MagicID", "r_dyn") > mean(short, "identity stage", "r_dyn")),
        "  (95 % CIs separate) ": bool(separated(short, "identity stage", "MagicID", "r_dyn")),
        "MagicID r_id not below baseline": bool(mean(short, "MagicID", "r_id") >= mean(short, "identity stage", "r_id")),
    }
    if paired is not None and paired.get("r_dyn") and paired.get("r_id"):
        claims["  (paired by identity × prompt × seed: MagicID − baseline r_dyn, 95 % CI above 0)"] = \
            bool(paired["r_dyn"][1] > 0)
        claims["  (paired: MagicID − baseline r_id, 95 % CI reaches 0 or above)"] = bool(paired["r_id"][2] >= 0)
    claims.update({} if people is None else {
        "person-motion prompts: MagicID r_dyn above baseline":
            bool(mean(people, "MagicID", "r_dyn") > mean(people, "identity stage", "r_dyn")),
        "  (95 % CIs separate)  ": bool(separated(people, "identity stage", "MagicID", "r_dyn")),
        "person-motion prompts: MagicID r_id not below baseline":
            bool(mean(people, "MagicID", "r_id") >= mean(people, "identity stage", "r_id")),
    })
    if long is None:
        return claims
    curve = {model: np.asarray(long[model]["id_curve"]["mean"]) for model in long}
    third = {model: (float(c[: len(c) // 3].mean()), float(c[-(len(c) // 3):].mean())) for model, c in curve.items()}
    claims[f"baseline r_id fades over {long_frames} frames (last third < first third)"] = \
        bool(third["identity stage"][1] < third["identity stage"][0])
    if fade is not None:
        claims["  (per video, last third − first third: 95 % CI below 0)"] = bool(fade[2] < 0)
    return {**claims, "id_curve_thirds": third}
