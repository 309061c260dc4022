"""fast_sampling.py: the lossless mode is the stock pipeline's sampler; the fast-mode flags change it."""

import numpy as np
import pytest
import torch

import fast_sampling
from model import VideoModel

SIZE = dict(frames=9, height=64, width=64, steps=6, guidance=5.0)


@pytest.fixture(scope="module")
def wan():
    return VideoModel.from_pretrained("tiny")


def test_lossless_mode_returns_the_stock_pipelines_latents(wan):
    prompts = ["a person walking", "a dog running"]
    stock_videos, stock = wan.sample(prompts, seed=[3, 7], **SIZE)
    fast_videos, fast = fast_sampling.sample(wan, prompts, seed=[3, 7], **SIZE)
    assert fast.shape == stock.shape == (2, 16, 3, 8, 8)
    # fp32 on the CPU: only the batching of the CFG branches differs, so rounding is all that may.
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-4)
    assert np.abs(fast_videos.astype(int) - stock_videos.astype(int)).max() <= 1


def test_a_video_does_not_depend_on_the_others_in_its_batch(wan):
    _, alone = fast_sampling.sample(wan, ["a person walking"], seed=[5], **SIZE)
    _, batched = fast_sampling.sample(wan, ["a dog running", "a person walking"], seed=[4, 5], **SIZE)
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
        fast_sampling.sample(cog, ["a"], frames=9, height=64, width=64, steps=2)
