"""The toy prompt judge (toyworld/train_judge.py, weights/toyworld-judge): a small CLIP trained on the toy world's
frames and captions, loaded through judges.py as any CLIP is. It must prefer a held-out person's own caption over
one with an attribute changed, and its training must never see a held-out identity."""

from pathlib import Path

import numpy as np
import pytest
import torch

from toyworld import identities, judge_check, train_judge

JUDGE = Path(__file__).resolve().parents[1] / "weights" / "toyworld-judge"


@pytest.fixture(scope="module")
def judge():
    import judges

    return judges.load_judge(f"clip:{JUDGE}")


def test_the_shipped_judge_prefers_the_matched_caption_on_held_out_people(judge):
    """16 held-out identities (seeds from 1,500,000) for each of hair colour, glasses and a hat changed in the
    caption, and 16 scenes with the subject changed; 5 frames of 128 px, a world seed training never used.
    Measured on this fixed set when the judge was trained (toyworld/README.md, "The toy prompt judge"): attributes
    43 of 48 (0.896: hair 16, glasses 12, hat 15 of 16), scenes 16 of 16; pinned with a margin (an untrained judge
    scores about 0.5: 0.479)."""
    checks = judge_check.check_videos(16, frames=5, size=128, kinds=("hair colour", "glasses", "hat", "scene"))
    result = judge_check.accuracy(judge, checks)
    assert judge.name == "CLIP toyworld-judge"
    assert result["attributes"]["videos"] == 48 and result["attributes"]["accuracy"] >= 0.80
    assert result["scene"]["accuracy"] >= 0.875


def test_the_tokenizer_gives_every_caption_word_one_token_and_spells_out_the_rest(judge):
    """learn_merges runs BPE until each of the world's words is one symbol; a word the world never says
    ("sks", the identity token) still encodes, as pieces of the byte-level alphabet, never as <unk>. The
    shipped judge's tokenizer is the one build_processor makes."""
    tokenizer = train_judge.build_processor().tokenizer
    words = train_judge.caption_words()
    assert {"person", "glasses", "hat", "blond", "haired", "camera", "pans", "rocket"} <= set(words)
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in words)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("sks", add_special_tokens=False).input_ids)
    assert "".join(pieces) == "sks</w>" and len(pieces) > 1
    caption = "a sks red-haired person with glasses waves, camera still"
    assert judge.processor.tokenizer(caption).input_ids == tokenizer(caption).input_ids


def test_train_judge_refuses_held_out_identity_seeds(tmp_path):
    """Seeds from 1,000,000 are the benchmark's: --population beyond them stops before anything is drawn or
    written, and the pool renderer itself refuses them too."""
    with pytest.raises(identities.HeldOutIdentityError, match="held out"):
        train_judge.main(["--population", str(identities.HELDOUT_FROM + 1), "--budget-s", "1",
                         "--out", str(tmp_path / "judge")])
    assert not (tmp_path / "judge").exists()
    with pytest.raises(identities.HeldOutIdentityError, match="held out"):
        train_judge.render_pool(0, identities.HELDOUT_FROM + 1, processor=None, deadline=0.0)


def test_contrastive_loss_is_clips_with_soft_targets_for_repeats_and_extra_columns_for_hard_negatives():
    """Distinct captions: CLIP's symmetric cross-entropy with the diagonal as targets. Two frames with the same
    caption and logits [[2, 0], [0, 2]]: each row's target is (½, ½), so by hand L = ½·(ln(1 + e⁻²) + ln(1 + e²))
    = 1.12693 in both directions (one-hot targets would give 0.12693). One image, its caption (logit 1) and a
    hard negative (logit 3): image→text ln(1 + e²) = 2.12693, text→image over the one image 0, L = 1.06346."""
    logits = torch.tensor([[3.0, 1.0, -1.0], [0.5, 2.0, 0.0], [1.0, 1.0, 4.0]], dtype=torch.float64)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    assert train_judge.contrastive_loss(logits, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(clip.item(),
                                                                                                        abs=1e-12)
    repeated = train_judge.contrastive_loss(torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64),
                                            torch.ones(2, 2, dtype=torch.bool))
    assert repeated.item() == pytest.approx(0.5 * (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0))), abs=1e-9)
    negative = train_judge.contrastive_loss(torch.tensor([[1.0, 3.0]], dtype=torch.float64),
                                            torch.tensor([[True, False]]))
    assert negative.item() == pytest.approx(0.5 * np.log1p(np.exp(2.0)), abs=1e-9)


def test_attribute_swap_changes_one_attribute_the_caption_names_and_nothing_else():
    """Hand-checked captions in the world's grammar: glasses come off without breaking "and a beard"; a named hair
    colour becomes each other colour; nothing is put on (a person whose glasses go unnamed may wear them); a
    caption naming no attribute, or a scene, has no hard negative."""
    rng = np.random.default_rng(0)
    swaps = lambda caption: {train_judge.attribute_swap(caption, rng) for _ in range(200)}  # noqa: E731
    assert swaps("a person with glasses and a beard nods, camera still") == {"a person with a beard nods, camera still"}
    assert swaps("a blond person with glasses, camera pans left") == {
        "a blond person, camera pans left", "a dark-haired person with glasses, camera pans left",
        "a brown-haired person with glasses, camera pans left", "a red-haired person with glasses, camera pans left",
        "a grey-haired person with glasses, camera pans left"}
    assert swaps("a person in a hat waves, camera still") == {"a person waves, camera still"}
    assert swaps("a photo of a person") == swaps("a person with a moustache talks, camera still") == {None}
    assert swaps("a cat, camera pans left") == {None}
