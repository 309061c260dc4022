"""toyworld/train_judge.py — a toy-world prompt judge: a small CLIP trained from scratch on the world's captions.

MagicID's third reward r_sem (judges.py) asks a judge whether a video shows its prompt; offline there are no
CLIP or VLM weights, so the toy world trains its own. A stock transformers CLIPModel at a small size (a ViT on
64×64 frames, 8-px patches; a 3-layer text transformer) learns, contrastively, which caption goes with which
frame of the world's videos (CLIP, Radford et al. 2021):

  s_ij = exp(τ) · cos(E_img(frame_i), E_txt(caption_j))                        (CLIPModel's logits_per_image)
  L    = ½ · [ CE(s_i·, y_i·) + CE(s_·j, y_·j) ]                                 over a batch of B pairs
  y_ij = [caption_i = text_j] / #{k : caption_i = text_k}                      (ours: soft targets)

The texts are the batch's B captions plus, for each caption naming an attribute of the person, a hard
negative: the caption with it changed (attribute_swap: hair colour swapped, glasses / hat off; NegCLIP's
idea). Soft targets because the world repeats captions ("a photo of a person" is frequent): a one-hot target
would push a frame from its own caption.

Data: the pretraining mix (toyworld/pretrain.py): scenes seen through a moving camera (world.py), generic
people (people.py: hats, glasses, hair colours) and the identity population (identities.PopulationWorld:
seeds 0..999,999 only; it refuses the held-out ones, which the judge check renders). Each video gives 3
frames; a training step takes one of them at random. A single frame cannot show motion, so the motion words
of a caption are judged no better than chance, like real CLIP's per-frame cosine (CLIP-T).

Tokenizer: a real CLIPTokenizer whose BPE merges are learned here from the world's caption words until each
word is one token (learn_merges); anything else (made-up words, "sks") falls back to single characters.
Saved with save_pretrained (safetensors) and a CLIPProcessor, so judges.load_judge("clip:DIR") loads it as it
loads any CLIP. Rendering takes --render-share of --budget-s, training the rest.

    OMP_NUM_THREADS=1 python toyworld/train_judge.py                  # ~18 min on a CPU core -> weights/toyworld-judge
    OMP_NUM_THREADS=1 python toyworld/judge_check.py                  # its accuracy on held-out identities

Exports: main, parse_args, caption_words, learn_merges, build_processor, render_pool, attribute_swap,
contrastive_loss.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root

from toyworld import identities, people, world as toy  # noqa: E402
from toyworld.pretrain import learning_rate  # noqa: E402

IMAGE_SIZE, PATCH = 64, 8     # the judge's input: 8×8 patches of a 64×64 frame (the processor resizes any video)
MAX_TOKENS = 32               # captions are ≤ 16 tokens; made-up words take one per letter
FRAMES = 3                    # frames rendered per training video, one used per step
RENDER_SIZE = 128             # the tiny presets' video size; the processor brings it to IMAGE_SIZE
MIX = {"scenes": 0.3, "people": 0.3, "population": 0.4}  # shares of the rendered videos
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def main(argv=None) -> dict:
    args = parse_args(argv)
    identities.check_pretraining_seed(args.population - 1)   # before anything is drawn: one clear line
    torch.manual_seed(args.seed)
    start = time.time()
    processor = build_processor()
    model = build_model(processor.tokenizer)
    frames, captions = render_pool(args.seed, args.population, processor, start + args.budget_s * args.render_share)
    print(f"pool: {len(captions)} videos × {FRAMES} frames in {time.time() - start:.0f} s", flush=True)
    curve = train(model, processor.tokenizer, frames, captions, args, deadline=start + args.budget_s)
    out = Path(args.out)
    model.save_pretrained(out)                                # config.json + model.safetensors
    store_in_bfloat16(Path(out) / "model.safetensors")
    processor.save_pretrained(out)                            # tokenizer + preprocessor config
    log = {"command": "python toyworld/train_judge.py " + " ".join(argv or sys.argv[1:]), "args": vars(args),
           "videos": len(captions), "frames_per_video": FRAMES, "mix": MIX, "seconds": round(time.time() - start),
           "steps": len(curve), "loss_first_last_50": [float(np.mean(curve[:50])), float(np.mean(curve[-50:]))],
           "loss_every_50": [round(float(np.mean(curve[i:i + 50])), 4) for i in range(0, len(curve), 50)],
           "parameters": sum(p.numel() for p in model.parameters()),
           "vocabulary": len(processor.tokenizer), "caption_words": len(caption_words())}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_every_50"}))
    return log


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "weights" / "toyworld-judge"), help="the judge's folder")
    p.add_argument("--budget-s", type=float, default=1080.0, help="seconds for rendering and training together")
    p.add_argument("--render-share", type=float, default=0.25, help="share of --budget-s spent rendering the pool")
    p.add_argument("--batch", type=int, default=128, help="frame-caption pairs per step (the contrastive batch)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine to a tenth)")
    p.add_argument("--seed", type=int, default=0, help="the world's seed (the judge check uses others)")
    p.add_argument("--population", type=int, default=identities.HELDOUT_FROM,
                   help="identity seeds 0..N-1 (N at most 1,000,000: the rest are held out)")
    return p.parse_args(argv)


# ---- the tokenizer: the world's words, one token each ----------------------------------------

def caption_words() -> list[str]:
    """Every word the world's captions use (world.py, people.py, identities.py), as CLIP's pre-tokenizer
    splits them: runs of letters, and runs of punctuation (',' and '-')."""
    phrases = [*toy.NATURAL_IMAGES.values(), *toy.PROCEDURAL, *toy.MOTIONS, *(c.format("") for c in toy.STILL_CAPTIONS),
               *people.HAIR, *people.PERSON_MOTIONS, *identities.IDENTITY_MOTIONS, *identities.HAIR_STYLES,
               "a person with glasses and a beard", "a moustache", "in a hat"]
    return sorted({w for phrase in phrases for w in re.findall(r"[a-z]+|[^\sa-z0-9]+", phrase.lower())})


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE (Sennrich et al. 2016) on the word list until every word is one symbol: repeatedly merge the
    most frequent adjacent pair (ties: the larger pair, so the result is deterministic). CLIP marks a word's
    last symbol with '</w>'."""
    pieces = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges = []
    while any(len(p) > 1 for p in pieces):
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:]))
        best = max(counts, key=lambda pair: (counts[pair], pair))
        merges.append(best)
        pieces = [_merge(p, best) for p in pieces]
    return merges


def build_processor():
    """A CLIPProcessor: the BPE tokenizer above over byte-level characters (so any text encodes), and CLIP's
    image preprocessing at IMAGE_SIZE (resize the short side, centre crop, normalize)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    merges = learn_merges(caption_words())
    vocab = {}
    for token in [*SPECIALS, *sorted(ByteLevel.alphabet()), *(c + "</w>" for c in sorted(ByteLevel.alphabet())),
                  *("".join(pair) for pair in merges)]:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def build_model(tokenizer):
    """A stock CLIPModel, small: ~1.6 M parameters (6 MB in float32, stored in 3 MB of bfloat16)."""
    from transformers import CLIPConfig, CLIPModel

    width = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS,
                                         num_hidden_layers=3, **width, **ids),
                        vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, num_hidden_layers=4, **width),
                        projection_dim=128)
    return CLIPModel(config)


# ---- the data: the pretraining mix, rendered once --------------------------------------------

def render_pool(seed: int, population: int, processor, deadline: float, chunk: int = 64):
    """Videos of the mix until the deadline -> frames [N, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE] (float16, the
    processor's pixel values) and their N captions. Identities come only from PopulationWorld, which refuses
    held-out seeds."""
    world = toy.ToyWorld("cpu", seed=seed)
    makers = {"scenes": world.batch, "people": people.PeopleWorld(world).batch,
              "population": identities.PopulationWorld(world, population).batch}
    frames, captions = [], []
    while time.time() < deadline or not captions:
        counts = world.rng.multinomial(chunk, list(MIX.values()))
        for make, n in zip(makers.values(), counts):
            if n:
                videos, texts, _ = make(int(n), FRAMES, RENDER_SIZE)              # [n, 3, F, H, W] in [-1, 1]
                frames.append(pixel_values(toy.to_uint8(videos), processor))     # [n, F, 3, h, w]
                captions += texts
    return torch.cat(frames), captions


def pixel_values(videos: np.ndarray, processor) -> torch.Tensor:
    """uint8 videos [n, F, H, W, 3] -> the processor's pixel values [n, F, 3, h, w], float16 (the judge's input)."""
    n, f = videos.shape[:2]
    pixels = processor.image_processor(images=list(videos.reshape(n * f, *videos.shape[2:])),
                                       return_tensors="pt").pixel_values                 # [n·F, 3, h, w]
    return pixels.half().view(n, f, *pixels.shape[1:])


# ---- training --------------------------------------------------------------------------------

def train(model, tokenizer, frames: torch.Tensor, captions: list[str], args, deadline: float) -> list[float]:
    """AdamW on contrastive_loss over random batches (one random frame of each video) until the deadline; the
    texts of a batch are its B captions and an attribute_swap of each that names an attribute (hard negatives)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    generator, rng = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed)
    start, curve, steps = time.time(), [], 10 ** 9                                       # steps: the clock decides
    model.train()
    while time.time() < deadline:
        pick = torch.randint(len(captions), (args.batch,), generator=generator)          # [B] videos
        frame = torch.randint(FRAMES, (args.batch,), generator=generator)                # [B] one frame each
        positives = [captions[i] for i in pick]
        texts = positives + [n for n in (attribute_swap(c, rng) for c in positives) if n]  # [T ≥ B]
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = model(**tokens, pixel_values=frames[pick, frame].float())                   # logits_per_image [B, T]
        matches = torch.tensor([[c == t for t in texts] for c in positives])             # [B, T]
        loss = contrastive_loss(out.logits_per_image, matches)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, len(curve), steps, 50, start, deadline)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)                                          # τ ≤ ln 100, as CLIP
        curve.append(loss.item())
        if len(curve) % 50 == 0:
            print(f"step {len(curve)}: loss {np.mean(curve[-50:]):.3f}, {time.time() - start:.0f} s", flush=True)
    model.eval()
    return curve


def attribute_swap(caption: str, rng) -> str | None:
    """A hard negative (NegCLIP, Yuksekgonul et al. 2023): a person's caption with one attribute it names
    changed — the hair colour swapped, or the glasses / hat taken off; None when it names none.
    Why: in a random batch a caption rarely meets one that differs only by "with glasses", so nothing makes the
    image tower look for glasses (the first judge: 0.64 on glasses). Why only what the caption names: a
    negative that puts glasses on is wrong for people whose glasses go unnamed, and, being ~15× as frequent as
    the captions that name them, taught the text tower that "with glasses" is always wrong (worn: 0.16)."""
    hair = [caption.replace(name, other) for name in people.HAIR if name in caption
            for other in people.HAIR if other != name]
    glasses = caption.replace("with glasses and ", "with ").replace(" with glasses", "")
    hat = caption.replace(" in a hat", "")
    kinds = [k for k in (hair, [glasses], [hat]) if k and k[0] != caption]             # one kind, then one change
    if "person" not in caption or not kinds:
        return None
    kind = kinds[rng.integers(len(kinds))]
    return kind[rng.integers(len(kind))]


def contrastive_loss(logits: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with soft targets. logits [B, T]: image i × text j, the first B texts the
    images' own captions, the rest hard negatives; matches [B, T]: whether text j is image i's caption word for
    word. y_ij = matches_ij / Σ_j matches_ij, so a caption repeated in the batch is never a negative of its own
    frames; the text-to-image direction runs over the B captions (a hard negative has no image)."""
    matches = matches.float()
    image_to_text = -(matches / matches.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    own = matches[:, :logits.shape[0]]                                                  # [B, B], symmetric
    text_to_image = -(own / own.sum(0, keepdim=True) * logits[:, :logits.shape[0]].log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every adjacent occurrence of pair in symbols (left to right) by their concatenation."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def store_in_bfloat16(path: Path) -> None:
    """The weights rewritten in bfloat16 (config.json keeps float32, so from_pretrained loads them back as float32):
    half the size, which keeps the tree the device tool carries under its 64 MiB with the population base beside it."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}, str(path),
              metadata={"format": "pt"})


if __name__ == "__main__":
    main()
