"""judges.py — the prompt-following reward's judges: does this video show its prompt?

MagicID's third reward r_sem (paper Sec. 3, Table 3: it raises both the dynamic degree and CLIP-T) asks a
judge whether a video shows its prompt c. Two judges, one interface (judge.name, judge.num_frames,
judge.score(video, prompt, num_frames) -> rewards.PromptScore), each loaded once from a local folder:

    CLIP     r_sem = 1/|S| · Σ_{f∈S} cos(CLIP_image(f), CLIP_text(c))          a cosine, ~0.2-0.35 for a match
    VLM      r_sem = P(yes) / (P(yes) + P(no))                                  in [0, 1], the paper's choice
             after "These are |S| frames of one video, in order. Does this video show: c? Answer yes or no."
             (VQAScore-style, Lin et al. 2024), P summed over the spellings yes/Yes/ yes/ Yes (and no), a
             several-token spelling scored exactly by teacher forcing.

The VLM runs through transformers' own image-text-to-text classes and the model's chat template
(AutoModelForImageTextToText + AutoProcessor; safetensors only, never remote code), so any such folder
works: SmolVLM (Idefics3) is tested offline; Qwen2-VL / Qwen2.5-VL processors need torchvision.

Exports: load_judge("clip:DIR" | "vlm:DIR"), load_clip, load_vlm, ClipScorer, VlmJudge (each a
rewards.PromptJudge, the interface prompt_reward defines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from rewards import PromptJudge, PromptScore, cosine_to_reference, sample_frame_indices


def load_judge(spec: str, device: str = "cpu") -> PromptJudge:
    """'clip:DIR' or 'vlm:DIR', a local checkpoint folder -> its judge, loaded once; pass it to
    prompt_reward / score_videos."""
    kind, _, folder = spec.partition(":")
    if kind not in ("clip", "vlm") or not folder:
        raise ValueError(f"prompt judge {spec!r}: write clip:DIR (a local CLIP checkpoint folder) or vlm:DIR "
                         f"(a local image-text-to-text VLM folder, e.g. SmolVLM-256M-Instruct or Qwen2.5-VL)")
    return load_clip(folder, device) if kind == "clip" else load_vlm(folder, device)


@dataclass
class ClipScorer:
    """The CLIP judge: r_sem = 1/|S| · Σ_{f∈S} cos(CLIP_image(f), CLIP_text(c)), a cosine."""
    model: object       # transformers CLIPModel, eval mode
    processor: object   # its CLIPProcessor
    device: str
    folder: str         # the checkpoint folder's name
    num_frames: ClassVar[int] = 8

    @property
    def name(self) -> str:
        return f"CLIP {self.folder}"

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore:
        import torch

        frames = sample_frame_indices(len(video), num_frames)
        inputs = self.processor(text=[prompt], images=list(video[frames]), return_tensors="pt",
                                padding=True, truncation=True).to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        image_emb = out.image_embeds.float().cpu().numpy()   # [S, D]
        text_emb = out.text_embeds[0].float().cpu().numpy()  # [D]
        per_frame = cosine_to_reference(image_emb, np.ones(len(frames), bool), text_emb)  # [S]
        return PromptScore(float(per_frame.mean()), True, self.name, per_frame)


def load_clip(path: str | Path, device: str = "cpu") -> ClipScorer:
    """A local CLIP checkpoint folder (saved by transformers: config, weights, tokenizer,
    preprocessor). Loaded once; pass the result to prompt_reward / score_videos."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no CLIP checkpoint at {path}: give a folder with config.json, weights, tokenizer "
                                f"and preprocessor files (e.g. openai/clip-vit-base-patch32 downloaded beforehand), "
                                f"or leave the judge out to switch r_sem off")
    if _model_type(path) != "clip":
        raise ValueError(f"{path} holds a {_model_type(path)!r} checkpoint, not CLIP (model_type 'clip' in "
                         f"config.json); for an image-text-to-text VLM pass vlm:{path}")
    model = CLIPModel.from_pretrained(path).eval().to(device)
    return ClipScorer(model, CLIPProcessor.from_pretrained(path), device, path.name)


VLM_QUESTION = "These are {n} frames of one video, in order. Does this video show: {prompt}? Answer yes or no."
YES, NO = ("yes", "Yes", " yes", " Yes"), ("no", "No", " no", " No")   # the spellings a chat model answers with


@dataclass
class VlmJudge:
    """The VLM judge, VQAScore-style (Lin et al. 2024, "Evaluating text-to-visual generation with
    image-to-text generation") on video frames. The S sampled frames go in as S images of one user
    message, then VLM_QUESTION, through the model's own chat template; from the next-token distribution
    (softmax over the whole vocabulary), with P(yes) summed over the spellings in YES:

        r_sem = P(yes) / (P(yes) + P(no))

    Why renormalize over yes/no: a chat model spreads its answer over spellings ("Yes", " yes", ...)
    and formatting tokens; the ratio is its yes-vs-no odds in [0, 1] (0.5: undecided) whatever that
    leak, and answer_mass = P(yes) + P(no) is kept in every score to show when it is large.
    Why S separate images, not one grid: each frame keeps the resolution the vision encoder was trained
    at (a 2×2 grid quarters a face's area) and SmolVLM / Qwen2.5-VL are trained on multi-image input;
    the cost is S times the image tokens. A spelling of several tokens t_1..t_k counts with
    Π_i P(t_i | frames, question, t_<i): one more forward pass each.
    """
    model: object      # AutoModelForImageTextToText, eval mode
    processor: object  # its AutoProcessor: image processor, tokenizer, chat template
    device: str
    folder: str        # the checkpoint folder's name
    yes: list          # [tuple of token ids] per spelling of yes, deduplicated
    no: list           # the same for no
    num_frames: ClassVar[int] = 4

    @property
    def name(self) -> str:
        return f"VLM {self.folder} ({type(self.model).__name__})"

    def score(self, video: np.ndarray, prompt: str, num_frames: int) -> PromptScore:
        import torch
        from PIL import Image

        frames = sample_frame_indices(len(video), num_frames)                         # [S]
        question = VLM_QUESTION.format(n=len(frames), prompt=prompt.strip().rstrip("."))
        images = [{"type": "image", "image": Image.fromarray(frame)} for frame in video[frames]]
        messages = [{"role": "user", "content": [*images, {"type": "text", "text": question}]}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}                                         # pixels in the model's dtype
        with torch.no_grad():
            next_token = self._log_probs(inputs)[-1]                                  # [V] log P(· | frames, question)
            log_yes, log_no = (torch.logsumexp(torch.stack([self._answer_log_prob(inputs, next_token, answer)
                                                            for answer in answers]), 0)
                               for answers in (self.yes, self.no))
        reward = float(torch.sigmoid(log_yes - log_no))                               # P(yes) / (P(yes) + P(no))
        return PromptScore(reward, True, self.name, answer_mass=float(log_yes.exp() + log_no.exp()))

    def _log_probs(self, inputs: dict):
        """log-softmax over the vocabulary at every position of the one sequence: [L, V] float32."""
        import torch

        return torch.log_softmax(self.model(**inputs).logits[0].float(), dim=-1)

    def _answer_log_prob(self, inputs: dict, next_token, answer: tuple):
        """log P(answer | frames, question): one token read off next_token; several by appending all but
        the last to the input, where positions L-1 .. L+k-2 predict t_1 .. t_k."""
        import torch

        if len(answer) == 1:
            return next_token[answer[0]]
        ids = torch.tensor(answer, device=self.device)                                # [k]
        length = inputs["input_ids"].shape[1]
        log_probs = self._log_probs(_append_tokens(inputs, ids[:-1]))[length - 1:]    # [k, V]
        return log_probs.gather(1, ids[:, None]).sum()


def load_vlm(path: str | Path, device: str = "cpu") -> VlmJudge:
    """A local image-text-to-text checkpoint folder, loaded through transformers' own classes
    (AutoModelForImageTextToText, AutoProcessor; safetensors only, never remote code); bf16 on CUDA."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    path = Path(path).expanduser()
    expected = ("give a folder saved by transformers with config.json, *.safetensors weights and the processor "
                "files (tokenizer, image processor, chat template), e.g. HuggingFaceTB/SmolVLM-256M-Instruct "
                "downloaded beforehand")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no VLM checkpoint at {path}: {expected}")
    if _model_type(path) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        hint = f"; for a CLIP folder pass clip:{path}" if _model_type(path) == "clip" else ""
        raise ValueError(f"{path} holds a {_model_type(path)!r} checkpoint, not an image-text-to-text VLM that "
                         f"transformers knows (e.g. idefics3, smolvlm, qwen2_5_vl){hint}")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no *.safetensors weights (pickled .bin files are not loaded): "
                                f"{expected}")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, ImportError) as err:   # Qwen-VL's processors need torchvision, for one
        raise ValueError(f"cannot load the processor in {path} ({err}): {expected}") from None
    if getattr(processor, "tokenizer", None) is None or not getattr(processor, "chat_template", None):
        raise ValueError(f"{path} has no tokenizer or no chat template: the judge asks its question in the model's "
                         f"own chat format; use an instruction-tuned checkpoint ({expected})")
    yes, no = _spellings(processor.tokenizer, YES), _spellings(processor.tokenizer, NO)
    if any(a[:len(b)] == b or b[:len(a)] == a for a in yes for b in no):
        raise ValueError(f"the tokenizer in {path} starts a spelling of 'yes' and one of 'no' with the same tokens: "
                         f"P(yes) cannot be read from the next-token logits")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True, dtype=dtype)
    return VlmJudge(model.eval().to(device), processor, device, path.name, yes, no)


# ---- helpers, in the order the judges above use them -----------------------------------------

def _model_type(path: Path) -> str | None:
    """config.json's model_type of a checkpoint folder: 'clip', 'idefics3', 'qwen2_5_vl', ..."""
    return json.loads((path / "config.json").read_text()).get("model_type")


def _spellings(tokenizer, words) -> list[tuple]:
    """Token ids of each word, deduplicated; a spelling whose tokens begin with another spelling's is
    dropped, its probability being part of the shorter one's already."""
    ids = list(dict.fromkeys(tuple(tokenizer.encode(word, add_special_tokens=False)) for word in words))
    return [a for a in ids if a and not any(len(b) < len(a) and a[:len(b)] == b for b in ids)]


def _append_tokens(inputs: dict, ids) -> dict:
    """The chat inputs with text tokens ids [k] appended: each per-token input [1, L] becomes [1, L+k]
    (attention 1, token type 0 = text); images and the rest unchanged."""
    import torch

    grown = dict(inputs)
    for key, fill in (("input_ids", None), ("attention_mask", 1), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
        if key in inputs:
            extra = ids if fill is None else torch.full_like(ids, fill)
            grown[key] = torch.cat([inputs[key], extra[None].to(inputs[key].dtype)], dim=1)
    return grown
