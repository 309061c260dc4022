"""cli.py — the command lines: train.py's flags, the flags every script shares, and --help's look.

train.py, generate.py and evaluate.py take the same model flags (--model, --device, --bf16, --compile,
--attention-backend, --low-memory, --fp8) and turn them into a loaded model.VideoModel the same way, with defaults
that follow the device: bf16, compiled blocks on CUDA, the low-memory path on GPUs under 40 GiB
(speedups.py). HelpFormatter prints each script's docstring as written and every flag's default.
train.py's flags live here (train_parser; parse_train_args fills in the --model preset's defaults, PRESETS), so
that flags.py can check a train.py command line without importing train.py: which values each flag may take is
flags.py's, checked before anything loads. ArgumentParser raises argparse's own complaints (an unknown flag, a
wrong type) instead of printing the usage and exiting, so flags.py says them in one line like every other.

Exports: ArgumentParser, HelpFormatter, add_model_args, load_model_from_args, PRESETS, preset_name, train_parser,
parse_train_args.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import fp8
from model import LORA_TARGETS, MODEL_PRESETS, ModelLoadError, VideoModel
from speedups import KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB, LOW_MEMORY_BELOW_GIB, keeps_attention
from tiny import TINY_PRESETS

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but what it cannot read (an unknown flag, a wrong type, a missing --ref) is raised as
    argparse.ArgumentError instead of printed with the usage before exiting: flags.parse_or_exit says it in one
    line, and the web page (flags.train_flag_error) gets the line instead of an exit."""

    def error(self, message):
        raise argparse.ArgumentError(None, message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's --help: its module docstring as written, and each flag's default unless the help
    already names it (or there is none to name)."""

    def _get_help_string(self, action):
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if "default" in (action.help or "") or nothing:
            return action.help
        return super()._get_help_string(action)


def add_model_args(parser) -> None:
    """--model/--device/--bf16/--compile/--attention-backend, the same in train.py, generate.py and evaluate.py."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="wan-1.3b",
                       help=f"preset ({', '.join([*sorted(MODEL_PRESETS), *TINY_PRESETS])}), hub id or local "
                            "diffusers folder; the tiny ones run offline on a CPU (tiny-toyworld once pretrained); "
                            "wan2.2-14b:high or :low trains that expert only (experts.py)")
    group.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    group.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bfloat16 transformer and text encoder (default: on for CUDA, off for CPU)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile each transformer block (default: on for CUDA: 1.2-1.3x faster on an "
                            "H100, same output up to bf16 rounding; bench/NOTES.md)")
    group.add_argument("--attention-backend", default=None,
                       help="fa4 (FlashAttention-4, attention.py), sdpa (PyTorch), or a diffusers kernel name such as "
                            "_native_cudnn (default: fa4 on SM90+ GPUs where flash-attn-4 is installed, else sdpa)")
    group.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                       help=f"text encoder on the CPU between uses and a tiled VAE, to fit 24 GiB at 81x480x832 "
                            f"(default: on for GPUs under {LOW_MEMORY_BELOW_GIB} GiB; bench/NOTES.md)")
    group.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=False,
                       help="the transformer blocks' frozen linear weights in float8 and their matmuls on FP8 tensor "
                            "cores (fp8.py; needs the bf16 model, the GPU default, on an SM89+ GPU): half their "
                            "memory and faster matmuls, at the price of FP8 rounding in every output "
                            "(bench/bench_fp8.py measures both); it changes results, so a run records it and a "
                            "--resume must match it")


def load_model_from_args(args, gradient_checkpointing: bool = False, checkpoint_blocks: int | None = None,
                         offload_blocks: int = 0) -> VideoModel:
    import parallel

    device = args.device or str(parallel.device())  # under accelerate launch: this process's GPU
    on_gpu = device.startswith("cuda")
    use_bf16 = args.bf16 if args.bf16 is not None else on_gpu
    gpu_gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30 if on_gpu else None
    low_memory = args.low_memory if args.low_memory is not None else (on_gpu and gpu_gib < LOW_MEMORY_BELOW_GIB)
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    if args.fp8 and (reason := fp8.fp8_unsupported(device, dtype)):  # said before the slow load, not after
        raise ModelLoadError(reason)
    model = VideoModel.from_pretrained(args.model, dtype=dtype, device=device, low_memory=low_memory)
    if low_memory:
        print("low-memory path: text encoder on the CPU between uses, tiled VAE (--no-low-memory turns it off)")
    if args.fp8:
        model.enable_fp8()
    keep_attention = keeps_attention(gradient_checkpointing, low_memory, len(model.transformers), gpu_gib)
    if gradient_checkpointing and not low_memory and not keep_attention:
        print(f"two experts on a {gpu_gib:.0f} GiB GPU: checkpointed blocks recompute attention (keeping it runs out "
              f"of memory under {KEEP_ATTENTION_TWO_EXPERTS_MIN_GIB} GiB: speedups.py)")
    model.enable_speedups(compile_blocks=args.compile if args.compile is not None else on_gpu,
                          gradient_checkpointing=gradient_checkpointing, checkpoint_blocks=checkpoint_blocks,
                          offload_blocks=offload_blocks,
                          keep_attention=keep_attention,  # +9 GiB at 81 frames for Wan2.1
                          attention_backend=args.attention_backend or ("fa4" if on_gpu else None))
    return model


# The settings that differ between the offline toy-world preset (--model tiny, tiny-cogvideox) and a
# published backbone (Wan2.1 / CogVideoX on one 80 GB GPU); the preset follows --model (ours).
# tiny: the toy-world base (toyworld/README.md) learns a face it has never seen, and draws it in videos
# of other prompts, after ~800 steps at 2e-3 of a LoRA on attention and feed-forward layers (README run r_id
# 0.919; 0.928 at 1200 steps, which pushed the run past 5 minutes); its VAE draws one dlib can find when the
# face fills the frame (1.5 face heights). 2 evaluation seeds: time too (toyworld/benchmark.py keeps 1200 and 3).
# DPO at 2e-5 (at 2e-4 the loss saturates within ~10 steps: toyworld/README.md); β by dpo.py's rule in both presets.
# published: 33-frame videos, 10 repository prompts (x 4 videos x 2 sources) and 6 report videos per model, so
# that a whole run takes under an hour on one H100 (bench/time_to_lora.py extrapolates this preset to 54 min; 81
# frames, 20 prompts and 12 report videos per model to ~3.7 h). generate.py still makes the model's 81 frames.
PRESETS = {
    "tiny": dict(identity_steps=800, dpo_identity_steps=60, dpo_dynamic_steps=60, lr=2e-3, dpo_lr=2e-5,
                 rank=64, lora_targets="attention+ffn", face_framing=1.5, batch_size=2, videos_per_prompt=4,
                 num_prompts=4, static_videos=4, eval_prompts=3, eval_seeds=2, sample_steps=12, checkpoint_every=50,
                 grad_checkpointing=False, beta="auto", frames=None),
    "published": dict(identity_steps=800, dpo_identity_steps=300, dpo_dynamic_steps=300, lr=1e-4, dpo_lr=1e-5,
                      rank=64, lora_targets="attention", face_framing=3.0, batch_size=1, videos_per_prompt=4,
                      num_prompts=10, static_videos=16, eval_prompts=3, eval_seeds=2, sample_steps=30,
                      checkpoint_every=100, grad_checkpointing=True, beta="auto", frames=33),
}


def preset_name(model: str) -> str:
    return "tiny" if model.startswith("tiny") else "published"


def train_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's flags; parse with parse_train_args, which fills in the preset's defaults."""
    p = ArgumentParser(prog="train.py", description=description, formatter_class=HelpFormatter)

    def preset_arg(group, flag, help, **kwargs):
        """A flag whose default comes from PRESETS, shown in --help as 'tiny X / published Y'."""
        key = flag.lstrip("-").replace("-", "_")
        shown = " / ".join(f"{name} {PRESETS[name][key]}" for name in PRESETS)
        group.add_argument(flag, default=None, help=f"{help} (default by --model: {shown})", **kwargs)

    p.add_argument("--ref", action="append", required=True, help="a photo (or folder of photos) of the person; repeatable")
    p.add_argument("--out", default=None, help="run folder (default: runs/<first photo's name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the run")
    p.add_argument("--token", default="sks", help="the rare word that names the person in prompts")
    p.add_argument("--prompts", default=str(PROMPTS_DIR / "train.txt"), help="repository prompts, one per line")
    p.add_argument("--heldout-prompts", default=str(PROMPTS_DIR / "heldout.txt"), help="evaluation prompts")
    add_model_args(p)
    g = p.add_argument_group("schedule (defaults follow --model: the tiny preset, or a published backbone)")
    preset_arg(g, "--identity-steps", "identity-stage LoRA steps", type=int)
    preset_arg(g, "--dpo-identity-steps", "DPO steps on identity pairs", type=int)
    preset_arg(g, "--dpo-dynamic-steps", "DPO steps on dynamic pairs", type=int)
    g.add_argument("--rounds", type=int, default=1, help="preference rounds; >1 regenerates the repository with "
                                                         "the current model (online, ours)")
    preset_arg(g, "--lr", "identity-stage learning rate", type=float)
    preset_arg(g, "--dpo-lr", "DPO learning rate", type=float)
    g.add_argument("--warmup", type=int, default=10, help="linear learning-rate warm-up, steps")
    preset_arg(g, "--rank", "LoRA rank", type=int)
    preset_arg(g, "--lora-targets", "layers the LoRA adapts", choices=sorted(LORA_TARGETS))
    preset_arg(g, "--batch-size", "videos (identity) or pairs (DPO) per step", type=int)
    preset_arg(g, "--checkpoint-every", "steps between checkpoints", type=int)
    preset_arg(g, "--grad-checkpointing", "recompute block activations in backward: less memory, slower",
               action=argparse.BooleanOptionalAction)
    g.add_argument("--checkpoint-blocks", type=int, default=None,
                   help="with --grad-checkpointing, recompute only the first N blocks (None: all; Wan-1.3B's "
                        "DPO step at 33 frames on an H100: all at 12.7 GiB, 23 1.17 s/step at 23.2 GiB, 0 1.08 s at "
                        "58.7 GiB plus the text encoder's 11 GiB: bench/NOTES.md)")
    g.add_argument("--offload-blocks", type=int, default=0,
                   help="with --grad-checkpointing, K blocks whose saved activations wait in host memory instead of "
                        "being recomputed (offload.py): of the first N + K blocks (N: --checkpoint-blocks; all blocks "
                        "without it), K evenly spread go to the host, the rest are recomputed. Free while the "
                        "copies hide under compute: measured on an H100 with --fp8 at 33 frames, --checkpoint-blocks "
                        "16 --offload-blocks 6 is 1.086 s/step at 22.4 GiB vs 22 recomputed 1.100 s at 23.6 GiB; needs "
                        "~1.7 GiB of host memory a block")
    v = p.add_argument_group("videos")
    preset_arg(v, "--frames", "frames per training and report video, 4k+1 (None: the model's)", type=int)
    v.add_argument("--height", type=int, default=None, help="pixels (None: the model's)")
    v.add_argument("--width", type=int, default=None, help="pixels (None: the model's)")
    preset_arg(v, "--sample-steps", "denoising steps when generating", type=int)
    v.add_argument("--cfg-interval", type=int, default=1,
                   help="repository fast mode (Wan): the unconditional CFG branch only every k-th step, lossy; "
                        "1 = exact (bench/NOTES.md measures its speed and its effect on the rewards)")
    v.add_argument("--cache", default=None,
                   help="repository fast mode (Wan), lossy: a diffusers cache hook that skips transformer blocks "
                        "while the output barely changes, e.g. sea:0.3 (fast_sampling.cache_config; bench/NOTES.md)")
    preset_arg(v, "--static-videos", "static videos made from the photos", type=int)
    preset_arg(v, "--face-framing", "static videos show the photo cropped to this many face heights (0: whole photo)",
               type=float)
    v.add_argument("--jitter", type=float, default=0.1, help="static-video crop/scale jitter, fraction of the side")
    r = p.add_argument_group("repository, rewards and pairs")
    preset_arg(r, "--num-prompts", "repository prompts used from --prompts", type=int)
    preset_arg(r, "--videos-per-prompt", "K videos per prompt and model", type=int)
    r.add_argument("--id-backend", default="auto", choices=["auto", "dlib", "insightface", "toyface"],
                   help="ID encoder (toyface: the toy world's, toy_face.py)")
    r.add_argument("--id-model-root", default=None, help="insightface model pack folder (toyface: its weights folder)")
    r.add_argument("--judge", default=None, help="prompt reward r_sem: clip:DIR (a local CLIP folder) or vlm:DIR (a "
                                                 "local VLM folder, the paper's choice); None: r_sem off")
    r.add_argument("--sem-floor", type=float, default=None,
                   help="with --judge: generated videos with r_sem below this take part in no pair; the scale is the "
                        "judge's: a CLIP cosine (~0.2-0.35 for a match) or a VLM's P(yes) in [0, 1] (None: no floor)")
    r.add_argument("--delta-id", type=float, default=None, help="identity margin δ_id (None: the backend's calibration)")
    r.add_argument("--tau-dyn", type=float, default=2.0, help="max |Δr_dyn| of an identity pair, px at 256-px side")
    r.add_argument("--dyn-margin", type=float, default=0.2, help="relative r_dyn margin of a dynamic pair")
    r.add_argument("--dyn-id-tolerance", type=float, default=0.0,
                   help="a dynamic winner may trail its loser's r_id by this much (0: the paper's dominance; an "
                        "investigation switch, toyworld/README.md)")
    r.add_argument("--max-pairs", type=int, default=None, help="keep at most this many pairs per rule (None: all)")
    r.add_argument("--max-uses", type=int, default=2, help="times one video may appear in dynamic pairs")
    d = p.add_argument_group("preference optimization")
    preset_arg(d, "--beta", "Diffusion-DPO β, or auto: β/2 · the reference's median winner-loser error gap = 1, "
                           "measured on the first pairs (dpo.py says why)", type=beta_value)
    d.add_argument("--sft-weight", type=float, default=0.0, help="weight of a denoising loss on winners")
    e = p.add_argument_group("report")
    preset_arg(e, "--eval-prompts", "held-out prompts in the report", type=int)
    preset_arg(e, "--eval-seeds", "seeds per held-out prompt", type=int)
    return p


def beta_value(text: str):
    """--beta's type: "auto" or a number (flags.py checks that it is > 0)."""
    return "auto" if text == "auto" else float(text)


def parse_train_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """train.py's command line: the flags as given, a flag left out at its --model preset's value (PRESETS),
    --out at runs/<first photo's name>. Raises argparse.ArgumentError where argparse cannot read it."""
    args = train_parser(description).parse_args(argv)
    for key, value in PRESETS[preset_name(args.model)].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or str(Path("runs") / Path(args.ref[0]).stem)
    return args
