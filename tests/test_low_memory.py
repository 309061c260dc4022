"""model.py's low-memory path: the text encoder visits the device once per batch of new prompts, the embeddings
are the ones the default path computes (which keeps each prompt too), and the VAE is tiled; chosen by
--low-memory or the GPU's size."""

import argparse

import torch

from cli import add_model_args, load_model_from_args
from model import VideoModel

PROMPTS = ["a sks person surfing", "a sks person dancing in the rain", ""]


def count_text_encoder_runs(model: VideoModel) -> list[int]:
    runs = [0]
    model.pipe.text_encoder.register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def test_low_memory_embeddings_equal_the_default_ones_and_each_prompt_is_encoded_once():
    default, low = VideoModel.from_pretrained("tiny"), VideoModel.from_pretrained("tiny", low_memory=True)
    runs = count_text_encoder_runs(low)
    low.cache_prompts(PROMPTS)
    assert runs[0] == 1  # all prompts in one visit
    for order in (PROMPTS, PROMPTS[::-1], [PROMPTS[0]] * 2):
        torch.testing.assert_close(low.encode_prompt(order), default.encode_prompt(order), rtol=0, atol=0)
    assert runs[0] == 1  # cached: the encoder never ran again
    low.encode_prompt(["a prompt nobody named up front"])
    assert runs[0] == 2
    assert next(low.pipe.text_encoder.parameters()).device.type == "cpu"


def test_the_default_path_keeps_each_prompt_too_and_its_encoder_stays_put():
    # One prompt cache, the model's, on both paths: only the low-memory one moves the text encoder.
    model = VideoModel.from_pretrained("tiny")
    runs = count_text_encoder_runs(model)
    model.cache_prompts(PROMPTS)
    assert runs[0] == 1
    model.encode_prompt(PROMPTS[:1])
    model.encode_prompt(PROMPTS[::-1])
    assert runs[0] == 1
    model.encode_prompt(["a prompt nobody named up front"])
    assert runs[0] == 2


def test_the_flag_chooses_the_path_and_the_vae_is_tiled():
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    auto = load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu"]))
    forced = load_model_from_args(parser.parse_args(["--model", "tiny", "--device", "cpu", "--low-memory"]))
    assert not auto.low_memory and not auto.vae.use_tiling  # a CPU is no small GPU
    assert forced.low_memory and forced.vae.use_tiling and forced.vae.use_slicing
