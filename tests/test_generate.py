"""generate.py end to end on the tiny preset: files a person can open, and errors a person can act on."""

import subprocess
import sys

import pytest

import generate
import media
from model import VideoModel


def test_generate_writes_a_readable_mp4_with_the_requested_frames(tmp_path):
    written = generate.main(["--model", "tiny", "--prompt", "a person walking", "--prompt", "a dog",
                             "--frames", "13", "--height", "64", "--width", "96", "--steps", "2",
                             "--out", str(tmp_path)])
    assert [p.split("/")[-1] for p in written] == ["a_person_walking_seed0.mp4", "a_dog_seed1.mp4"]
    video = media.read_video(written[0])
    assert video.shape == (13, 64, 96, 3)
    assert (tmp_path / "a_person_walking_seed0.png").is_file()


def test_generate_with_a_lora_uses_it(tmp_path):
    model = VideoModel.from_pretrained("tiny")
    model.add_lora(4)
    for p in model.lora_parameters():
        p.data.normal_(0, 0.2)
    model.save_lora(str(tmp_path / "lora"))
    common = ["--model", "tiny", "--prompt", "a person", "--frames", "5", "--height", "32", "--width", "32",
              "--steps", "2"]
    with_lora = media.read_video(generate.main(common + ["--lora", str(tmp_path / "lora"), "--out", str(tmp_path / "a")])[0])
    without = media.read_video(generate.main(common + ["--out", str(tmp_path / "b")])[0])
    assert with_lora.shape == without.shape and (with_lora != without).any()


@pytest.mark.parametrize("args, message", [
    (["--lora", "/no/such/lora", "--prompt", "x"], "no LoRA at"),
    (["--prompt", "x", "--frames", "8"], "4k+1"),
    ([], "at least one --prompt"),
])
def test_generate_fails_with_one_clear_message(args, message, tmp_path):
    result = subprocess.run([sys.executable, "generate.py", "--model", "tiny", "--out", str(tmp_path), *args],
                            capture_output=True, text=True)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(("error:", "generate.py: error:")) and message in last_line  # flags.py: its own line


def test_an_unreachable_hub_model_names_the_offline_preset(tmp_path):
    result = subprocess.run([sys.executable, "generate.py", "--model", "wan-1.3b", "--prompt", "x",
                             "--out", str(tmp_path)], capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "--model tiny" in result.stderr
