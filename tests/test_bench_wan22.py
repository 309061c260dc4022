"""bench/bench_wan22.py's arithmetic: token counts of the Wan2.2 videos and the expert switches a training step makes."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_wan22 import switches_per_step, video_tokens  # noqa: E402


def test_video_tokens_of_the_published_sizes():
    # TI2V-5B, 121 x 704 x 1280, 16x spatial / 4x temporal VAE, 1x2x2 patches: 31 latent frames of 44 x 80 -> 22 x 40
    assert video_tokens(121, 704, 1280, spatial=16, temporal=4) == 31 * 22 * 40 == 27_280
    # A14B's training video, 33 x 720 x 1280, Wan2.1's 8x VAE: 9 frames of 90 x 160 -> 45 x 80 (not 8,100)
    assert video_tokens(33, 720, 1280, spatial=8, temporal=4) == 9 * 45 * 80 == 32_400
    # Wan2.1-1.3B at 81 x 480 x 832: bench/NOTES.md's 32,760
    assert video_tokens(81, 480, 832, spatial=8, temporal=4) == 32_760


def test_switches_per_step_hand_worked():
    # one pair a step: a switch whenever two steps in a row draw different experts, 2 p q
    assert switches_per_step(0.3, 1) == pytest.approx(2 * 0.3 * 0.7)
    # two pairs: p^2 = 0.09, q^2 = 0.49 -> 2 * 0.91 * 0.51 / (2 - 0.58)
    assert switches_per_step(0.3, 2) == pytest.approx(0.9282 / 1.42)
    assert switches_per_step(1.0, 3) == 0.0  # one expert: nothing ever moves


def test_switches_per_step_matches_a_simulated_run():
    rng = np.random.default_rng(0)
    p_high, items, steps = 0.3, 3, 200_000
    high = rng.random((steps, items)) < p_high                       # [steps, items] each item's expert
    resident, switches = True, 0
    for row in high:                                                  # grouped: the resident expert's items first
        others = row != resident
        if others.any():
            switches += 1
            resident = not resident
    assert switches / steps == pytest.approx(switches_per_step(p_high, items), abs=0.005)
