"""Diffusion-DPO on video pairs: the preference loss MagicID trains with (MagicID §3.3, Wallace et al. 2023).

For a pair (x_w, x_l) with one prompt c, draw one timestep t and one noise ε shared by both, and
with the backbone's own objective (flow matching: x_t = (1−σ)x_0 + σε, target ε − x_0; or eps / v):
    e_θ(x)   = mean ‖target(x, ε, t) − f_θ(x_t, t, c)‖²       the policy's error
    e_ref(x) = the same with the frozen reference f_ref (the model when DPO starts: base + identity LoRA)
    L = −log σ( −(β/2) · [ (e_θ(x_w) − e_ref(x_w)) − (e_θ(x_l) − e_ref(x_l)) ] )
Minimizing L lowers the policy's error on the winner, relative to the reference, more than on the
loser. At the start f_θ = f_ref, the bracket is 0 and L = log 2. An optional SFT term adds
λ_sft · e_θ(x_w) (ours, default 0).

Batches are laid out [winners; losers]: rows 0..B-1 are x_w, rows B..2B-1 the matching x_l.
The objective lives in model.py (denoising_error); this file never asks which backbone runs.
The reference is not a copy of the network: the same transformer runs with the policy's LoRA
switched off and the frozen reference adapter on, under no_grad.

Exports: dpo_loss (the equation, pure), preference_step (one batch through policy and reference), BETA,
beta_from_error_gaps (β's rule, ours: β/2 · the reference's typical winner–loser error gap = 1).
"""
import torch
import torch.nn.functional as F

# β scales the error gap inside the sigmoid; the sigmoid is informative while β/2 · gap is O(1). One fixed β
# cannot be right for every backbone: the gaps scale with the latents' size and the objective. The toy world
# showed both failures: at β = 2500 its gaps of ~0.01-0.2 put β/2 · gap at 10-200 and 47 of 60 steps of each DPO
# phase had a loss ≤ 1e-4 (no gradient); β = 100 worked but was found by hand. So the default is a rule (ours,
# beta_from_error_gaps, `--beta auto` in both presets): β = 2 / the reference's median winner–loser error gap on
# the pairs and draws the phase starts on. On the tiny preset it gives β ≈ 12 (gap 0.17), and each DPO phase
# climbs gradually (README tiny run: loss 0.68 → 0.34, implicit accuracy 0.80 → 0.95, margin 0.02 → 0.97 over
# 60 steps) instead of saturating. BETA is Diffusion-DPO's image value (2500-5000, lower end: a flow-matching
# target has about twice an ε target's variance), kept for `--beta` given by hand and runs without pairs.
BETA = 2500.0


def beta_from_error_gaps(e_ref_w, e_ref_l, start_margin: float = 1.0) -> float:
    """β chosen from the pairs themselves (ours), so one rule serves every backbone and latent size.

    e_ref_w, e_ref_l: [N] the reference's denoising errors of N winners and their losers at shared (t, ε),
    the draws the first DPO steps will use. Returns β = 2 · start_margin / median |e_ref_w − e_ref_l|.

    Why: the implicit margin is −(β/2)·inner, inner = Δ(x_w) − Δ(x_l), Δ = e_θ − e_ref. AdamW moves the
    LoRA by about the learning rate per step whatever β is, so β only decides *where on the sigmoid* the
    errors' changes land. Over a phase, |inner| grows to about the size of the errors' own differences
    between videos (toy world: gaps 0.01-0.1, inner reached ~0.09 at the end of a phase with β = 100).
    Scaling β by 1/gap puts β/2 · gap at start_margin: the sigmoid is informative for the whole phase,
    neither flat (margin ~ 0 for hundreds of steps: β too small) nor saturated within a few steps (loss
    ≈ 0 and no gradient: β too large), whatever the latent's channel count, size or objective scale.
    The median, not the mean: a few pairs far apart in error (a very noisy t) must not set the scale.
    """
    gaps = (torch.as_tensor(e_ref_w, dtype=torch.float64) - torch.as_tensor(e_ref_l, dtype=torch.float64)).abs()
    gap = gaps.median().item()
    if not gap > 0:
        raise ValueError("every winner-loser pair has the same reference error: no scale to set β from "
                         "(identical videos in the pairs?); pass --beta explicitly")
    return 2.0 * start_margin / gap


def dpo_loss(e_theta, e_ref, beta=BETA):
    """The Diffusion-DPO loss from per-sample denoising errors of a batch [winners; losers].

    e_theta, e_ref: [2B] fp32 (policy and reference errors, model.denoising_error).
    Returns (loss: scalar tensor, metrics: dict of 0-d tensors, turned into numbers only when logged,
    so a GPU step never waits on them):
      implicit_accuracy  fraction of pairs where the policy favours the winner (−inner > 0)
      reward_margin      mean implicit reward margin −(β/2)·inner
      err_w, err_l       mean policy errors e_θ(x_w), e_θ(x_l)
    """
    e_theta_w, e_theta_l = e_theta.float().chunk(2)       # [B], [B]
    e_ref_w, e_ref_l = e_ref.float().chunk(2)
    inner = (e_theta_w - e_ref_w) - (e_theta_l - e_ref_l)   # [B]; < 0: winner improved more
    reward_margin = -beta / 2 * inner                     # [B]
    loss = -F.logsigmoid(reward_margin).mean()            # −log σ(−β/2 · inner), stable for any margin
    metrics = {
        "loss_dpo": loss.detach(),
        "implicit_accuracy": (reward_margin > 0).float().mean(),
        "reward_margin": reward_margin.detach().mean(),
        "err_w": e_theta_w.detach().mean(),
        "err_l": e_theta_l.detach().mean(),
    }
    return loss, metrics


def preference_step(model, batch, beta=BETA, sft_weight=0.0, policy_adapter="default",
                    reference_adapter="reference", generator=None):
    """One batch of pairs through policy and reference; returns (loss, metrics of 0-d tensors) for backward().

    batch: latents_w [B, C, F, H, W], latents_l [B, C, F, H, W], text_emb [B, L, D].
    policy_adapter runs with grad; reference_adapter (None = the base model) runs under no_grad.
    generator draws t and ε (a torch.Generator; fixing its seed fixes the draw).
    """
    latents_w, latents_l = batch["latents_w"], batch["latents_l"]
    B = latents_w.shape[0]
    # model.to_device: copies queued behind the GPU's work, so the host never waits on it mid-loop
    x0 = model.to_device(torch.cat([latents_w, latents_l]).float())         # [2B, C, F, H, W]
    text_emb = model.to_device(batch["text_emb"]).repeat(2, 1, 1)            # [2B, L, D]
    # One t and one ε per pair, shared by winner and loser: otherwise the error gap is mostly
    # the difference between two noise draws, not between the two videos.
    t = model.sample_timesteps(B, generator).repeat(2)                       # [2B]
    noise_device = generator.device if generator is not None else model.device
    noise = torch.randn(latents_w.shape, generator=generator, device=noise_device)
    noise = model.to_device(noise).repeat(2, 1, 1, 1, 1)                     # [2B, C, F, H, W]

    with model.adapter(policy_adapter):
        e_theta = model.denoising_error(x0, noise, t, text_emb)              # [2B]
    with torch.no_grad(), model.adapter(reference_adapter):
        e_ref = model.denoising_error(x0, noise, t, text_emb)                # [2B]

    loss, metrics = dpo_loss(e_theta, e_ref, beta)
    if sft_weight:
        sft = e_theta[:B].mean()                                             # plain denoising on winners
        loss = loss + sft_weight * sft
        metrics["loss_sft"] = sft.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics
