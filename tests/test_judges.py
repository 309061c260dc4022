"""The prompt judges behind r_sem (rewards.py): a VLM asked "Does this video show: <prompt>?" scored as
P(yes) / (P(yes) + P(no)), and CLIP's text-frame cosine, both loaded from a local folder by load_judge.

The VLM is SmolVLM-256M-Instruct's architecture (Idefics3) shrunk, with random weights and a tokenizer
built here (conftest.tiny_vlm), saved with save_pretrained and loaded through the real loading path. The
expected scores are computed independently: the chat text written out by hand, each answer spelling
teacher-forced in full, probabilities summed in float64.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import judges as J  # noqa: E402
import rewards as R  # noqa: E402
from faces import load_references, make_face_encoder  # noqa: E402

PROMPT = "a sks person surfing a big wave"


@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return J.load_judge(f"vlm:{tiny_vlm}")


def random_video(seed, frames=9, height=48, width=80):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def expected_vlm_score(judge, video, prompt):
    """r_sem by hand: the chat text written out, each spelling of yes/no teacher-forced whole, float64."""
    frames = [Image.fromarray(f) for f in video[R.sample_frame_indices(len(video), 4)]]
    text = ("<|im_start|>User:" + "<image>" * 4 + f"These are 4 frames of one video, in order. Does this video "
            f"show: {prompt}? Answer yes or no.<end_of_utterance>\nAssistant:")
    inputs = judge.processor(text=[text], images=[frames], return_tensors="pt")
    length = inputs["input_ids"].shape[1]

    def probability(answer):  # P(t_1..t_k | context) = Π_i P(t_i | context, t_<i)
        ids = judge.processor.tokenizer.encode(answer, add_special_tokens=False)
        full = torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)
        with torch.no_grad():
            logits = judge.model(input_ids=full, attention_mask=torch.ones_like(full),
                                 pixel_values=inputs["pixel_values"],
                                 pixel_attention_mask=inputs["pixel_attention_mask"]).logits[0].double()
        log_p = torch.log_softmax(logits, -1)
        return float(torch.exp(sum(log_p[length - 1 + i, t] for i, t in enumerate(ids))))

    p_yes = sum(probability(a) for a in ("yes", "Yes", " yes", " Yes"))  # no spelling starts another here
    p_no = sum(probability(a) for a in ("no", "No", " no", " No"))
    return p_yes / (p_yes + p_no), p_yes + p_no


# ---- the VLM judge -----------------------------------------------------------------------------------------

def test_vlm_judge_scores_the_yes_no_odds_of_the_model(vlm, tiny_vlm):
    tokens = vlm.processor.tokenizer.convert_ids_to_tokens
    assert [tokens(list(a)) for a in vlm.yes] == [["yes"], ["Y", "es"], ["Ġyes"], ["Ġ", "Y", "es"]]
    assert [tokens(list(a)) for a in vlm.no] == [["no"], ["No"], ["Ġno"], ["ĠNo"]]
    video = random_video(0)
    score = R.prompt_reward(video, PROMPT + ".", vlm)  # a final period is the question's, not the prompt's
    reward, mass = expected_vlm_score(vlm, video, PROMPT)
    assert score.enabled and 0 <= score.reward <= 1 and score.per_frame is None
    assert score.reward == pytest.approx(reward, abs=1e-5) and score.answer_mass == pytest.approx(mass, rel=1e-4)
    assert score.reason == vlm.name == f"VLM {tiny_vlm.name} (Idefics3ForConditionalGeneration)"


def test_vlm_judge_same_frames_same_score_other_frames_other_score(vlm):
    video = random_video(1)                                  # 9 frames: the judge looks at 0, 3, 5 and 8
    first = R.prompt_reward(video, PROMPT, vlm).reward
    unseen_changed = video.copy()
    unseen_changed[[1, 2, 4, 6, 7]] = 0
    assert R.prompt_reward(video.copy(), PROMPT, vlm).reward == first
    assert R.prompt_reward(unseen_changed, PROMPT, vlm).reward == first
    seen_changed = video.copy()
    seen_changed[3] = 0
    assert R.prompt_reward(seen_changed, PROMPT, vlm).reward != first  # the frames reach the model
    assert R.prompt_reward(video, "a cat", vlm).reward != first        # and so does the prompt


def test_a_spelling_that_extends_another_is_not_counted_twice(vlm):
    tokenizer = vlm.processor.tokenizer
    y, yes_cap = tuple(tokenizer.encode("Y")), tuple(tokenizer.encode("Yes"))
    assert yes_cap[:1] == y and len(yes_cap) == 2              # "Yes" = "Y" + "es"
    assert J._spellings(tokenizer, ["Y", "Yes", "yes", "yes"]) == [y, tuple(tokenizer.encode("yes"))]


# ---- the CLIP judge through the same interface -------------------------------------------------------------

def test_clip_judge_is_the_mean_text_frame_cosine(tiny_clip):
    clip = J.load_judge(f"clip:{tiny_clip}")
    video = np.stack([skimage.data.astronaut()[:400, :400], skimage.data.coffee()[:400, :400]])  # [2, 400, 400, 3]
    score = R.prompt_reward(video, "an astronaut", clip)
    inputs = clip.processor(text=["an astronaut"], images=list(video), return_tensors="pt", padding=True)
    with torch.no_grad():
        m = clip.model  # CLIP's embeddings: pooled outputs through the projections
        image = m.visual_projection(m.vision_model(pixel_values=inputs["pixel_values"]).pooler_output).double()
        text = m.text_projection(m.text_model(input_ids=inputs["input_ids"]).pooler_output).double()
    expected = torch.nn.functional.cosine_similarity(image, text).numpy()
    assert score.per_frame == pytest.approx(expected, abs=1e-5)
    assert score.reward == pytest.approx(expected.mean(), abs=1e-5)
    assert score.reason == clip.name == f"CLIP {tiny_clip.name}" and score.answer_mass is None
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        J.load_clip(tiny_clip.parent / "absent")


def test_without_a_judge_or_a_prompt_the_reward_is_off_and_says_why(vlm):
    off = R.prompt_reward(random_video(2), PROMPT, None)
    assert off.reward is None and not off.enabled and "--judge" in off.reason
    no_prompt = R.prompt_reward(random_video(2), "", vlm)
    assert no_prompt.reward is None and "no prompt" in no_prompt.reason and vlm.name in no_prompt.reason


def test_score_videos_names_the_judge_in_every_row(vlm):
    encoder = make_face_encoder("dlib")
    refs = load_references([ROOT / "examples" / "astronaut.jpg"], encoder)
    videos = [random_video(3, frames=3), random_video(4, frames=3)]
    rows = R.score_videos(videos, [PROMPT, "a cat"], refs, encoder, judge=vlm, num_frames=3, progress=False)
    for video, prompt, row in zip(videos, [PROMPT, "a cat"], rows):
        assert row["r_sem"] == R.prompt_reward(video, prompt, vlm).reward and row["r_sem_status"] == vlm.name
        assert 0 < row["r_sem_answer_mass"] <= 1


# ---- a wrong folder: one clear message that names it and says what is expected -----------------------------

def test_wrong_judge_specs_and_folders_say_what_is_expected(tiny_vlm, tiny_clip, tmp_path):
    for spec in ("clip", "blip:/x", "vlm:"):
        with pytest.raises(ValueError, match="clip:DIR .* vlm:DIR"):
            J.load_judge(spec)
    with pytest.raises(FileNotFoundError, match=f"no VLM checkpoint at {tmp_path / 'absent'}.*config.json"):
        J.load_judge(f"vlm:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match=f"'clip' checkpoint, not an image-text-to-text VLM.*clip:{tiny_clip}"):
        J.load_judge(f"vlm:{tiny_clip}")
    with pytest.raises(ValueError, match=f"'idefics3' checkpoint, not CLIP.*vlm:{tiny_vlm}"):
        J.load_judge(f"clip:{tiny_vlm}")
    no_weights, no_template = tmp_path / "no_weights", tmp_path / "no_template"
    shutil.copytree(tiny_vlm, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"{no_weights} holds no \\*.safetensors"):
        J.load_judge(f"vlm:{no_weights}")
    shutil.copytree(tiny_vlm, no_template, ignore=shutil.ignore_patterns("chat_template.jinja"))
    with pytest.raises(ValueError, match=f"{no_template} has no tokenizer or no chat template"):
        J.load_judge(f"vlm:{no_template}")
