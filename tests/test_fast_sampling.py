"""fast_sampling.py: the lossless mode is the stock pipeline's sampler; the fast-mode flags change it;
model.sample(cfg_interval=k) is the one entry point to both."""

import numpy as np
import pytest
import torch

import fast_sampling
from model import VideoModel

SIZE = dict(frames=9, height=64, width=64, steps=6, guidance=5.0)


@pytest.fixture(scope="module")
def wan():
    return VideoModel.from_pretrained("tiny")


def fast_latents(model, prompts, seeds, cfg_interval=1):
    """fast_sampling's loop from the noise model.sample draws for these seeds."""
    noise = model.initial_noise(seeds, len(prompts), SIZE["frames"], SIZE["height"], SIZE["width"])
    return fast_sampling.sample_latents(model, model.encode_prompt(prompts), model.encode_prompt([""]), noise,
                                        SIZE["steps"], SIZE["guidance"], cfg_interval)


def test_lossless_mode_returns_the_stock_pipelines_latents(wan):
    prompts = ["a person walking", "a dog running"]
    stock_videos, stock = wan.sample(prompts, seed=[3, 7], **SIZE)
    fast = fast_latents(wan, prompts, [3, 7])
    assert fast.shape == stock.shape == (2, 16, 3, 8, 8)
    # fp32 on the CPU: only the batching of the CFG branches differs, so rounding is all that may.
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-4)
    assert np.abs(wan.decode(fast).astype(int) - stock_videos.astype(int)).max() <= 1


def test_model_sample_with_cfg_interval_runs_the_fast_loop(wan):
    videos, latents = wan.sample(["a person walking"], seed=[3], cfg_interval=2, **SIZE)
    torch.testing.assert_close(latents, fast_latents(wan, ["a person walking"], [3], cfg_interval=2))
    assert videos.shape == (1, 9, 64, 64, 3) and videos.dtype == np.uint8


def test_a_video_does_not_depend_on_the_others_in_its_batch(wan):
    alone = fast_latents(wan, ["a person walking"], [5])
    batched = fast_latents(wan, ["a dog running", "a person walking"], [4, 5])
    torch.testing.assert_close(batched[1:], alone, rtol=1e-4, atol=1e-4)


def test_cfg_interval_one_is_the_lossless_mode_and_two_changes_the_output(wan):
    text_emb = wan.encode_prompt(["a person walking"])
    negative_emb = wan.encode_prompt([""])
    noise = torch.randn(1, *wan.latent_shape(9, 64, 64), generator=torch.Generator().manual_seed(0))
    run = lambda k: fast_sampling.sample_latents(wan, text_emb, negative_emb, noise, steps=6, guidance=5.0,
                                                 cfg_interval=k)
    exact, every_other = run(1), run(2)
    assert torch.equal(run(1), exact)                                # deterministic
    assert not torch.allclose(every_other, exact)                    # the lossy mode really skips work
    assert torch.isfinite(every_other).all()


def test_guidance_one_runs_the_conditional_branch_alone(wan, monkeypatch):
    batches = []
    predict = wan.predict
    monkeypatch.setattr(wan, "predict", lambda x, t, e: batches.append(x.shape[0]) or predict(x, t, e))
    text_emb, negative_emb = wan.encode_prompt(["a"]), wan.encode_prompt([""])
    noise = torch.randn(1, *wan.latent_shape(9, 64, 64))
    fast_sampling.sample_latents(wan, text_emb, negative_emb, noise, steps=3, guidance=1.0)
    fast_sampling.sample_latents(wan, text_emb, negative_emb, noise, steps=4, guidance=5.0, cfg_interval=2)
    assert batches == [1, 1, 1] + [2, 1, 2, 1]                       # CFG batches [cond; uncond] every 2nd step


def test_rejects_a_backbone_it_does_not_sample():
    cog = VideoModel.from_pretrained("tiny-cogvideox")
    assert not fast_sampling.supports(cog)
    with pytest.raises(ValueError, match="model.sample"):
        cog.sample(["a"], frames=9, height=64, width=64, steps=2, cfg_interval=2)
