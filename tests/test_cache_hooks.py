"""fast_sampling with diffusers' cache hooks: a threshold that never skips is the lossless sampler, a threshold
that always may skips exactly what the hook's rule says, and nothing a hook remembers crosses from one video
to the next. block_evaluations, the measure of work saved, is checked against hand counts."""

import pytest
import torch

import fast_sampling
from model import VideoModel

STEPS, GUIDANCE = 8, 5.0


@pytest.fixture(scope="module")
def wan():
    return VideoModel.from_pretrained("tiny")


@pytest.fixture(scope="module")
def inputs(wan):
    """Two prompts and their noise: text_emb [2, L, D], negative_emb [1, L, D], noise [2, C, f, h, w]."""
    noise = torch.randn(2, *wan.latent_shape(9, 64, 64), generator=torch.Generator().manual_seed(11))
    return wan.encode_prompt(["a person walks to the left", "a dog running"]), wan.encode_prompt([""]), noise


def sample(wan, text_emb, negative_emb, noise, **flags):
    """(latents [B, C, f, h, w], block evaluations) of one sample_latents call."""
    with fast_sampling.block_evaluations(wan) as work:
        latents = fast_sampling.sample_latents(wan, text_emb, negative_emb, noise, STEPS, GUIDANCE, **flags)
    return latents, int(work)


@pytest.mark.parametrize("spec", ["first-block:0", "sea:0"])
def test_a_threshold_of_zero_reproduces_the_lossless_sampler_exactly(wan, inputs, spec):
    text_emb, negative_emb, noise = inputs
    cached, blocks = sample(wan, text_emb, negative_emb, noise, cache=spec)
    # The hook path denoises one video at a time; so does this reference, so no batching rounding remains.
    lossless = torch.cat([sample(wan, text_emb[b:b + 1], negative_emb, noise[b:b + 1])[0] for b in range(2)])
    assert torch.equal(cached, lossless)
    assert blocks == 2 * 2 * STEPS * len(wan.transformer.blocks)      # videos × CFG rows × steps × blocks: no skip


def test_block_evaluations_counts_rows_steps_and_blocks(wan, inputs):
    text_emb, negative_emb, noise = inputs
    N = len(wan.transformer.blocks)
    assert sample(wan, text_emb, negative_emb, noise)[1] == 2 * 2 * STEPS * N
    # cfg_interval=2: steps 0, 2, 4, 6 run [cond; uncond] (2 rows a video), steps 1, 3, 5, 7 the cond row alone
    assert sample(wan, text_emb, negative_emb, noise, cfg_interval=2)[1] == 2 * (4 * 2 + 4 * 1) * N


@pytest.mark.parametrize("spec, full_forwards", [
    ("first-block:1e9", None),   # step 0 full, then only block 1 (its residual decides; here it always may skip)
    ("sea:1e9", 4),              # step 0 kept, at most 2 reuses in a row, the last step kept: F C C F C C F F
    ("taylorseer:2", 5),         # steps 0-2 warm up, then full where (i − 4) % 2 == 0: steps 0, 1, 2, 4, 6
    ("taylorseer:3", 5),         # steps 0, 1, 2, 4, 7
])
def test_a_skipping_hook_runs_exactly_the_forwards_its_rule_says(wan, inputs, spec, full_forwards):
    text_emb, negative_emb, noise = inputs
    N = len(wan.transformer.blocks)
    latents, blocks = sample(wan, text_emb[:1], negative_emb, noise[:1], cache=spec)
    expected = N + (STEPS - 1) if full_forwards is None else full_forwards * N
    assert blocks == 2 * expected                                      # CFG: both rows in every evaluated block
    assert torch.isfinite(latents).all()
    assert not torch.equal(latents, sample(wan, text_emb[:1], negative_emb, noise[:1])[0])  # work really skipped


@pytest.mark.parametrize("spec", ["taylorseer:2", "first-block:0.2"])
def test_no_state_leaks_from_one_video_to_the_next(wan, inputs, spec):
    text_emb, negative_emb, noise = inputs
    together, _ = sample(wan, text_emb, negative_emb, noise, cache=spec)
    alone, _ = sample(wan, text_emb[1:], negative_emb, noise[1:], cache=spec)
    assert torch.equal(together[1:], alone)                             # the second video as if it came first
    assert torch.equal(sample(wan, text_emb, negative_emb, noise, cache=spec)[0], together)  # nor across calls
    assert not wan.transformer.is_cache_enabled                         # the hook is gone after the call


def test_model_sample_takes_a_cache_hook(wan, inputs):
    _, negative_emb, _ = inputs
    videos, latents = wan.sample(["a dog running"], frames=9, height=64, width=64, steps=STEPS, guidance=GUIDANCE,
                                 seed=[4], cache="taylorseer:2")
    noise = wan.initial_noise([4], 1, 9, 64, 64)
    expected, _ = sample(wan, wan.encode_prompt(["a dog running"]), negative_emb, noise, cache="taylorseer:2")
    torch.testing.assert_close(latents, expected)
    assert videos.shape == (1, 9, 64, 64, 3)


def test_bad_cache_requests_say_what_to_do(wan, inputs):
    text_emb, negative_emb, noise = inputs
    with pytest.raises(ValueError, match="not both"):
        fast_sampling.sample_latents(wan, text_emb, negative_emb, noise, 2, GUIDANCE, cfg_interval=2, cache="sea:0.3")
    with pytest.raises(ValueError, match="first-block:<threshold"):
        fast_sampling.cache_config("first-block:fast")
    with pytest.raises(ValueError, match="taylorseer"):
        fast_sampling.cache_config("teacache:0.1")
