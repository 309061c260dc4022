"""dpo.py against the spec (METHOD.md "The loss"): the Diffusion-DPO equation by hand, its value and
gradient at initialization, and preference_step on the tiny real models (flow matching and v)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dpo
from dpo import preference_step
from model import VideoModel

FRESH_SEEDS = list(range(10)) + [int.from_bytes(os.urandom(4), "little")]   # fixed ones plus one new each run


# ----------------------------------------------------------------------------- the equation

def dpo_loss(pred, ref_pred, target, beta):
    """dpo.dpo_loss fed the per-sample errors e = mean (pred − target)² of each row [2B, ...] -> [2B] in fp32,
    what model.denoising_error computes; metrics as floats."""
    def error(x):
        return (x.float() - target.float()).pow(2).flatten(1).mean(1)

    loss, metrics = dpo.dpo_loss(error(pred), error(ref_pred), beta)
    return loss, {key: value.item() for key, value in metrics.items()}


def hand_dpo(pred, ref_pred, target, beta):
    """The loss in float64 numpy, written straight from METHOD.md."""
    pred, ref_pred, target = (np.asarray(x, np.float64) for x in (pred, ref_pred, target))
    n = len(pred) // 2
    e_theta = ((pred - target) ** 2).reshape(len(pred), -1).mean(1)
    e_ref = ((ref_pred - target) ** 2).reshape(len(pred), -1).mean(1)
    inner = (e_theta[:n] - e_ref[:n]) - (e_theta[n:] - e_ref[n:])
    loss = np.mean(np.logaddexp(0.0, beta / 2 * inner))    # −log σ(−β/2·inner) = log(1 + e^{β/2·inner})
    return loss, inner, e_theta


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_dpo_loss_matches_a_float64_hand_computation(seed):
    rng = np.random.default_rng(seed)
    b = int(rng.integers(1, 6))
    shape = (2 * b, *rng.integers(1, 5, size=rng.integers(1, 5)))
    target = rng.normal(size=shape)
    pred = target + rng.normal(scale=0.3, size=shape)
    ref_pred = target + rng.normal(scale=0.3, size=shape)
    beta = float(rng.uniform(1, 5000))
    loss, metrics = dpo_loss(*(torch.tensor(x, dtype=torch.float32) for x in (pred, ref_pred, target)), beta)
    # compare with the float32 inputs the function saw
    want, inner, e_theta = hand_dpo(*(np.float32(x) for x in (pred, ref_pred, target)), beta)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert metrics["reward_margin"] == pytest.approx(np.mean(-beta / 2 * inner), rel=1e-4, abs=1e-3)
    assert metrics["implicit_accuracy"] == pytest.approx(np.mean(-inner > 0))
    assert metrics["err_w"] == pytest.approx(e_theta[:b].mean(), rel=1e-5)
    assert metrics["err_l"] == pytest.approx(e_theta[b:].mean(), rel=1e-5)


def test_dpo_loss_worked_example():
    # one pair, 1-element "videos": e_θ(w) = 1, e_ref(w) = 4, e_θ(l) = 4, e_ref(l) = 1
    # inner = (1 − 4) − (4 − 1) = −6; with β = 1: L = −log σ(3) = log(1 + e^{−3}) ≈ 0.04859
    pred = torch.tensor([[1.0], [2.0]])
    ref_pred = torch.tensor([[2.0], [1.0]])
    target = torch.tensor([[0.0], [0.0]])
    loss, metrics = dpo_loss(pred, ref_pred, target, beta=1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-3)), rel=1e-6)
    assert metrics["reward_margin"] == pytest.approx(3.0)
    assert metrics["implicit_accuracy"] == 1.0


def test_loss_is_log2_when_policy_equals_reference():
    pred = torch.randn(6, 4, 3, 2, 2)
    loss, metrics = dpo_loss(pred, pred.clone(), torch.randn_like(pred), beta=2500.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["reward_margin"] == 0.0 and metrics["implicit_accuracy"] == 0.0


def test_gradient_at_initialization_lowers_winner_error_and_raises_loser_error():
    # At f_θ = f_ref, dL/dinner = β/4, so dL/dpred = β/(4B) · (∂e_w/∂pred_w, −∂e_l/∂pred_l)
    # with ∂e/∂pred = 2(pred − target)/D: descent moves the winner's prediction toward its
    # target and the loser's away from its target.
    b, d, beta = 3, 5, 10.0
    target = torch.randn(2 * b, d)
    pred = torch.randn(2 * b, d, requires_grad=True)
    loss, _ = dpo_loss(pred, pred.detach().clone(), target, beta)
    loss.backward()
    sign = torch.tensor([1.0] * b + [-1.0] * b)[:, None]
    want = beta / (4 * b) * sign * 2 * (pred.detach() - target) / d
    assert torch.allclose(pred.grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_swapping_winner_and_loser_flips_the_inner_term(seed):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 5, (1,), generator=g))
    pred, ref_pred, target = (torch.randn(2 * b, 3, 4, generator=g) for _ in range(3))
    swap = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    loss, m = dpo_loss(pred, ref_pred, target, beta=5.0)
    loss_swapped, m_swapped = dpo_loss(pred[swap], ref_pred[swap], target[swap], beta=5.0)
    assert m_swapped["reward_margin"] == pytest.approx(-m["reward_margin"], rel=1e-5, abs=1e-6)
    assert m_swapped["implicit_accuracy"] == pytest.approx(1 - m["implicit_accuracy"])
    if b == 1:   # softplus(−x) − softplus(x) = −x
        assert (loss - loss_swapped).item() == pytest.approx(-m["reward_margin"], rel=1e-5, abs=1e-6)


def test_huge_margins_give_finite_loss_and_gradient():
    pred = torch.tensor([[0.0], [10.0]], requires_grad=True)
    loss, _ = dpo_loss(pred, torch.tensor([[10.0], [0.0]]), torch.zeros(2, 1), beta=1e6)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert loss.item() == 0.0                                # σ(5·10^7) is 1 in fp32


# ----------------------------------------------------------------------------- preference_step on tiny models

def policy_and_reference(name, dtype=torch.float32):
    """The DPO setup train.py builds: a trainable "default" LoRA and a frozen "reference" copy of it.
    peft starts LoRA B at 0, where only B would get a gradient; a small random B makes every LoRA
    weight matter, and the copy keeps policy == reference at the start."""
    model = VideoModel.from_pretrained(name, dtype=dtype)
    model.add_lora(4, name="default")
    torch.manual_seed(0)
    for p in model.lora_parameters("default"):
        if not p.any():
            p.data.normal_(0, 0.02)
    model.add_lora(4, name="reference", trainable=False)
    for p_ref, p in zip(model.lora_parameters("reference"), model.lora_parameters("default")):
        p_ref.data.copy_(p.data)
    model.set_adapter("default")
    shape = model.latent_shape(9, 64, 64)                   # [C, f, h, w]
    g = torch.Generator().manual_seed(1)
    batch = {"latents_w": torch.randn(2, *shape, generator=g), "latents_l": torch.randn(2, *shape, generator=g),
             "text_emb": model.encode_prompt(["a person surfing", "a person dancing"])}
    return model, batch


@pytest.fixture(scope="module", params=["tiny", "tiny-cogvideox"])
def setup(request):
    return policy_and_reference(request.param)


@pytest.fixture
def tiny(setup):
    """The module's model, with its LoRA weights and gradients put back after each test."""
    model, batch = setup
    saved = [p.detach().clone() for p in model.lora_parameters("default")]
    yield model, batch
    for p, s in zip(model.lora_parameters("default"), saved):
        p.data.copy_(s)
        p.grad = None
    model.set_adapter("default")


def draw(seed):
    return torch.Generator().manual_seed(seed)


def step(model, batch, **kwargs):
    """dpo.preference_step with its metrics (0-d tensors) as floats."""
    loss, metrics = preference_step(model, batch, **kwargs)
    return loss, {key: value.item() for key, value in metrics.items()}


def test_preference_step_starts_at_log2_and_one_sgd_step_prefers_the_winner(tiny):
    # One step down the gradient β/4·(∇e_w − ∇e_l) lowers e_θ(w) − e_θ(l) (first order: by
    # ‖∇e_w − ∇e_l‖²), whether each error alone falls or rises (that depends on how aligned the two
    # gradients are). Same t and ε before and after (same seed).
    model, batch = tiny
    loss, before = step(model, batch, generator=draw(0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    params = model.lora_parameters("default")
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
    torch.optim.SGD(params, lr=1e-2 / grad_norm.item()).step()
    with torch.no_grad():
        _, after = step(model, batch, generator=draw(0))
    assert after["err_w"] - after["err_l"] < before["err_w"] - before["err_l"]
    assert after["loss"] < math.log(2) and after["reward_margin"] > 0 and after["implicit_accuracy"] == 1.0


def test_winner_and_loser_share_noise_and_timestep(tiny):
    # With policy ≠ reference, identical winner and loser give inner = 0 only if both rows see the
    # same t and ε; two independent draws would leave a margin of order β · (error difference).
    model, batch = tiny
    with torch.no_grad():
        for p in model.lora_parameters("default"):
            p.add_(0.05 * torch.randn_like(p))
        same = {**batch, "latents_l": batch["latents_w"]}
        _, m_same = step(model, same, generator=draw(3))
        _, m_diff = step(model, batch, generator=draw(3))
    assert abs(m_same["reward_margin"]) < 1e-2
    assert abs(m_diff["reward_margin"]) > 10 * abs(m_same["reward_margin"]) + 1e-2


def test_reference_gets_no_gradient_and_stays_frozen(tiny):
    model, batch = tiny
    reference_before = [p.detach().clone() for p in model.lora_parameters("reference")]
    policy_before = [p.detach().clone() for p in model.lora_parameters("default")]
    optimizer = torch.optim.AdamW(model.lora_parameters("default"), lr=1e-2)  # train.optimize's optimizer
    for seed in range(2):                                                     # two steps: the policy moves
        optimizer.zero_grad()
        loss, _ = step(model, batch, generator=draw(seed))
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lora_parameters("default"))
        assert all(p.grad is None and not p.requires_grad for p in model.lora_parameters("reference"))
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(model.lora_parameters("reference"), reference_before))
    assert not all(torch.equal(p, q) for p, q in zip(model.lora_parameters("default"), policy_before))


def test_same_seed_same_draw_and_reference_none_is_the_base_model(tiny):
    model, batch = tiny
    with torch.no_grad():
        a, _ = step(model, batch, generator=draw(5))
        b, _ = step(model, batch, generator=draw(5))
        c, _ = step(model, batch, generator=draw(6), reference_adapter=None)
    assert a.item() == b.item()
    assert a.item() == pytest.approx(math.log(2), abs=1e-6) and c.item() != pytest.approx(math.log(2), abs=1e-4)


def test_sft_weight_adds_the_winners_denoising_error(tiny):
    model, batch = tiny
    with torch.no_grad():
        loss, m = step(model, batch, generator=draw(0), sft_weight=0.5)
    assert m["loss_sft"] == pytest.approx(m["err_w"], rel=1e-6)
    assert loss.item() == pytest.approx(m["loss_dpo"] + 0.5 * m["loss_sft"], rel=1e-6)


def test_bf16_errors_give_an_fp32_loss():
    e_theta, e_ref = torch.rand(4, dtype=torch.bfloat16), torch.rand(4, dtype=torch.bfloat16)
    loss, _ = dpo.dpo_loss(e_theta, e_ref, beta=10.0)
    inner = (e_theta[:2].float() - e_ref[:2].float()) - (e_theta[2:].float() - e_ref[2:].float())
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(F.softplus(5.0 * inner).mean().item())


def test_bf16_model_keeps_fp32_lora_weights_and_fp32_loss():
    model, batch = policy_and_reference("tiny", dtype=torch.bfloat16)   # denoising_error runs under autocast
    loss, _ = step(model, batch, generator=draw(0))
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(math.log(2), abs=1e-6)
    for p in model.lora_parameters("default"):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- β's rule (ours)

def test_beta_rule_worked_example():
    # gaps |w − l| = 0.1, 0.02, 0.05 -> median 0.05 -> β = 2 · 1 / 0.05 = 40; a start margin of 2 doubles it
    e_w, e_l = torch.tensor([0.3, 0.50, 0.20]), torch.tensor([0.2, 0.52, 0.25])
    assert dpo.beta_from_error_gaps(e_w, e_l) == pytest.approx(40.0)
    assert dpo.beta_from_error_gaps(e_w, e_l, start_margin=2.0) == pytest.approx(80.0)


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_beta_rule_puts_the_median_pair_at_the_start_margin_whatever_the_error_scale(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    scale = 10.0 ** rng.uniform(-4, 2)                     # toy latents to published ones: errors of any size
    e_w, e_l = rng.uniform(0, scale, n), rng.uniform(0, scale, n)
    beta = dpo.beta_from_error_gaps(torch.tensor(e_w), torch.tensor(e_l))
    margins = np.sort(beta / 2 * np.abs(e_w - e_l))        # float64, independent of the function's median
    below = np.sum(margins < 1 - 1e-9)
    above = np.sum(margins > 1 + 1e-9)
    # torch's median is the lower middle value for an even count: at most half the pairs lie above β/2·gap = 1
    assert below <= n // 2 and above <= n // 2, (below, above, n)
    assert np.any(np.isclose(margins, 1.0))


def test_beta_rule_refuses_pairs_without_a_gap():
    with pytest.raises(ValueError, match="--beta"):
        dpo.beta_from_error_gaps(torch.ones(4), torch.ones(4))
