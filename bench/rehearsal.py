"""Dress rehearsal: a real user's first run at Wan2.1-T2V-1.3B's published sizes, on random weights.

Nobody here can download Wan2.1, but every size, file and loading path can be rehearsed, from `from_pretrained` on:

  build      a local diffusers folder of Wan2.1-T2V-1.3B at its published configs — transformer (30 blocks, 1536
             wide, bf16), VAE (`AutoencoderKLWan()` defaults, fp32), UniPC flow scheduler (shift 3), and a UMT5-XXL
             text encoder (24 layers, 4096 wide, 5.7 B parameters, bf16: 11.4 GB) — random weights, safetensors; a
             byte-level tokenizer (tiny.byte_tokenizer) stands in for the SentencePiece one, which is not on disk here
  train      python train.py --model <folder> --ref examples/astronaut.jpg ... with small counts (1 prompt, 2 steps
             of everything), videos at the model's 81 x 480 x 832
  generate   python generate.py --model <folder> --lora <run>/magicid_lora (81 x 480 x 832)
  lora       (instead of train, to rehearse generate.py alone) a random rank-64 attention LoRA for the folder,
             saved where train.py would write magicid_lora

Each stage runs in its own process, so its peaks are its own: wall seconds, peak GPU memory (torch's allocator:
allocated and reserved, GiB), peak host memory (max RSS, GiB). --memory-cap-gib makes every process cap itself
with torch.cuda.set_per_process_memory_fraction: a smaller card rehearsed on a big one. Weights are random, so the
rewards and pairs mean nothing; the pair thresholds are opened (--tau-dyn, --dyn-margin) so DPO steps do run.

    python bench/rehearsal.py --out runs/rehearsal --table bench/rehearsal.md                     # GPU, default path
    python bench/rehearsal.py --out runs/rehearsal --stages train,generate --memory-cap-gib 24 --low-memory
    python bench/rehearsal.py --out runs/rehearsal --stages lora,generate --memory-cap-gib 24 --low-memory
    python bench/rehearsal.py --small --out /tmp/rehearsal      # CPU check of the whole script, toy sizes, ~3 min

--backbone wan2.2-5b / wan2.2-14b rehearses Wan2.2 instead (BACKBONES: TI2V-5B's 48-channel 16x VAE and 30 blocks
3072 wide with per-token timesteps; T2V-A14B's two 40-block 5120-wide experts, boundary 0.875) at its published
video size (121 x 704 x 1280; 81 x 720 x 1280). The A14B folder is ~67 GB of safetensors (two 28 GB experts and
UMT5-XXL): it needs a box with more than 64 GB of disk (nvidia-h100-x2: 128 GB). The VAE statistics
(latents_mean/std) are placeholders (0, 1): the weights are random anyway.

    python bench/rehearsal.py --backbone wan2.2-5b --out runs/rehearsal-5b --table bench/rehearsal.md
    python bench/rehearsal.py --backbone wan2.2-14b --small --out /tmp/rehearsal-14b   # CPU check, toy widths
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import tiny  # noqa: E402
from published import PUBLISHED_TRANSFORMER, SMALL_VAE, environment, print_table  # noqa: E402

# text_encoder/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers: google/umt5-xxl's encoder
PUBLISHED_TEXT_ENCODER = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, dropout_rate=0.1, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
# --small: the same classes at toy widths, so the whole rehearsal runs on a CPU in minutes
SMALL_TRANSFORMER = dict(PUBLISHED_TRANSFORMER, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2,
                         text_dim=32, freq_dim=32)
SMALL_TEXT_ENCODER = dict(PUBLISHED_TEXT_ENCODER, vocab_size=len(tiny.byte_tokenizer()), d_model=32, d_kv=8, d_ff=64,
                          num_layers=2, num_heads=4, relative_attention_num_buckets=8)
# What --backbone builds: the published configs (diffusers' Wan-AI/*-Diffusers folders' config.json); Wan2.2's
# VAE is AutoencoderKLWan at the 5B's settings, the A14B's is Wan2.1's (the class defaults).
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
                 out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
BACKBONES = {
    "wan2.1-1.3b": dict(folder="Wan2.1-T2V-1.3B-random", transformer={}, vae={}, small_vae=SMALL_VAE, shift=3.0,
                        pipeline={}, experts=1),
    "wan2.2-5b": dict(folder="Wan2.2-TI2V-5B-random", shift=5.0, pipeline=dict(expand_timesteps=True), experts=1,
                      transformer=dict(num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48),
                      vae=WAN22_VAE, small_vae=dict(WAN22_VAE, base_dim=16, decoder_base_dim=None, dim_mult=[1, 1, 1, 1],
                                                    num_res_blocks=1)),
    "wan2.2-14b": dict(folder="Wan2.2-T2V-A14B-random", shift=3.0, pipeline=dict(boundary_ratio=0.875), experts=2,
                       transformer=dict(num_attention_heads=40, ffn_dim=13824, num_layers=40), vae={},
                       small_vae=SMALL_VAE),
}
STAGES = ("build", "train", "generate")  # and "lora", which stands in for train when generate.py is rehearsed alone
TRAIN_COUNTS = ["--identity-steps", "2", "--dpo-identity-steps", "2", "--dpo-dynamic-steps", "2", "--num-prompts", "1",
                "--videos-per-prompt", "1", "--static-videos", "1", "--eval-prompts", "1", "--eval-seeds", "1",
                "--sample-steps", "2", "--checkpoint-every", "1000",
                "--tau-dyn", "1000", "--dyn-margin", "0"]  # random weights: open the pair rules so DPO runs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/rehearsal", help="folder for the model folder and the run")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {STAGES}")
    p.add_argument("--small", action="store_true", help="toy widths and 9x64x64 videos: a CPU check of the script")
    p.add_argument("--backbone", default="wan2.1-1.3b", choices=sorted(BACKBONES), help="which published configs")
    p.add_argument("--memory-cap-gib", type=float, default=None, help="cap each stage's GPU memory (GiB)")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="pass --low-memory / --no-low-memory to train.py and generate.py (default: their own choice)")
    p.add_argument("--extra", default="", help="more flags for train.py and generate.py, e.g. '--no-compile'")
    p.add_argument("--label", default=None, help="first column of the table rows (default: from the cap)")
    p.add_argument("--table", default=None, help="append the results table to this file")
    p.add_argument("--budget-s", type=float, default=3600, help="stop a stage that would run past this many seconds")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)   # internal: run one stage in this process
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    own, rest = split_at_double_dash(sys.argv[1:])  # the child's stage arguments come after "--"
    args = p.parse_args(own)
    if args.child:
        return run_stage_here(args.child, rest, args.memory_cap_gib, args.result, Path(args.out), args.small,
                              args.backbone)

    out = Path(args.out)
    folder, run_dir = out / BACKBONES[args.backbone]["folder"], out / ("run" if args.memory_cap_gib is None else "run-capped")
    size = ["--frames", "9", "--height", "64", "--width", "64"] if args.small else []  # else the model's 81x480x832
    memory = [] if args.low_memory is None else ["--low-memory" if args.low_memory else "--no-low-memory"]
    memory += args.extra.split()
    commands = {
        "build": [], "lora": [str(folder), str(run_dir / "magicid_lora"), *memory],
        "train": ["--ref", str(REPO / "examples" / "astronaut.jpg"), "--model", str(folder), "--out", str(run_dir),
                  "--id-backend", "dlib", *TRAIN_COUNTS, *size, *memory],
        "generate": ["--model", str(folder), "--lora", str(run_dir / "magicid_lora"), "--prompt",
                     "a sks person walking on a beach", "--steps", "2", "--out", str(run_dir / "generated"), *size, *memory],
    }
    print(environment(), flush=True)
    label = args.label or ("default" if args.memory_cap_gib is None else f"capped at {args.memory_cap_gib:g} GiB")
    deadline = time.perf_counter() + args.budget_s
    rows = []
    for stage in args.stages.split(","):
        result = run_stage_in_child(stage, commands[stage], args, deadline)
        rows.append([label, stage, f"{result['seconds']:.1f}", gib(result.get("gpu_allocated")),
                     gib(result.get("gpu_reserved")), gib(result.get("host_peak")), result["status"]])
        print(f"== {stage}: {rows[-1][2:]}", flush=True)
    device = "CPU"
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    print_table(f"Rehearsal, {args.backbone} published configs (random weights), {device}",
                ["path", "stage", "wall s", "GPU peak alloc GiB", "GPU peak reserved GiB", "host peak GiB", "status"],
                rows, file=args.table)


def run_stage_in_child(stage: str, argv: list[str], args, deadline: float) -> dict:
    """Run one stage as `python bench/rehearsal.py --child stage ...` and read back what it measured."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = handle.name
    command = [sys.executable, __file__, "--child", stage, "--result", result_file, "--out", args.out,
               "--backbone", args.backbone]
    command += ["--small"] if args.small else []
    command += ["--memory-cap-gib", str(args.memory_cap_gib)] if args.memory_cap_gib else []
    start = time.perf_counter()
    try:
        subprocess.run(command + ["--", *argv], cwd=REPO, timeout=max(1.0, deadline - start), check=False)
        result = json.loads(Path(result_file).read_text() or "{}")
    except subprocess.TimeoutExpired:
        result = {"status": "stopped: out of budget"}
    except json.JSONDecodeError:
        result = {"status": "died before reporting (killed?)"}
    finally:
        os.unlink(result_file)
    result.setdefault("seconds", time.perf_counter() - start)
    return result


def run_stage_here(stage: str, argv: list[str], cap_gib: float | None, result_file: str, out: Path, small: bool,
                   backbone: str = "wan2.1-1.3b"):
    """The child: cap the GPU, run the stage, write {seconds, gpu_allocated, gpu_reserved, host_peak, status}."""
    if torch.cuda.is_available() and cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total))
    start, status = time.perf_counter(), "ok"
    try:
        if stage == "build":
            build_published_folder(out / BACKBONES[backbone]["folder"], small, backbone)
        elif stage == "lora":
            write_random_lora(*argv[:2], low_memory="--low-memory" in argv)
        else:
            module = __import__(stage)  # train.py / generate.py from the repository root
            module.main(argv)
    except SystemExit as error:  # the scripts' own "error: ..." exits
        status = f"failed: {error}" if error.code not in (None, 0) else "ok"
    except Exception as error:  # noqa: BLE001 — recorded in the table, traceback printed
        traceback.print_exc()
        status = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    result = {"seconds": time.perf_counter() - start, "status": status,
              "host_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB
    if torch.cuda.is_available():
        result.update(gpu_allocated=torch.cuda.max_memory_allocated(), gpu_reserved=torch.cuda.max_memory_reserved())
    Path(result_file).write_text(json.dumps(result))


def build_published_folder(folder: Path, small: bool, backbone: str = "wan2.1-1.3b") -> None:
    """Write a WanPipeline folder at the published configs (random weights) that DiffusionPipeline.from_pretrained reads.

    Parameters are created directly in their saved dtype on the GPU (bf16 transformer and text encoder, fp32 VAE):
    the 5.7 B-parameter UMT5 takes seconds to initialise there and minutes on a CPU.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    config = BACKBONES[backbone]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        shape = {**(SMALL_TRANSFORMER if small else PUBLISHED_TRANSFORMER),  # --small keeps only the channels
                 **{k: v for k, v in config["transformer"].items() if not small or k.endswith("_channels")}}
        experts = [WanTransformer3DModel(**shape) for _ in range(config["experts"])]
        text_encoder = UMT5EncoderModel(UMT5Config(**(SMALL_TEXT_ENCODER if small else PUBLISHED_TEXT_ENCODER)))
        torch.set_default_dtype(torch.float32)
        vae = AutoencoderKLWan(**(config["small_vae"] if small else config["vae"]))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=config["shift"])
    pipe = WanPipeline(tokenizer=tiny.byte_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=experts[0], transformer_2=experts[1] if len(experts) > 1 else None,
                       **config["pipeline"])
    transformer = experts[0]
    pipe.save_pretrained(str(folder), safe_serialization=True)
    parameters = {name: sum(p.numel() for p in module.parameters()) / 1e9
                  for name, module in (("transformer (each expert)", transformer), ("text_encoder", text_encoder),
                                       ("vae", vae))}
    on_disk = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e9
    print(f"wrote {folder}: " + ", ".join(f"{k} {v:.3f} B params" for k, v in parameters.items())
          + f"; {on_disk:.1f} GB of safetensors", flush=True)


def write_random_lora(folder: str, lora_dir: str, low_memory: bool) -> None:
    """A LoRA with random (non-zero) weights for the model in `folder`, saved as train.py saves magicid_lora."""
    from model import VideoModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = VideoModel.from_pretrained(folder, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                       device=device, low_memory=low_memory)
    model.add_lora(64, "attention", seed=0)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.normal_(0, 0.01)  # B too: a LoRA that changes the output, as a trained one does
    model.save_lora(lora_dir)


def split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    return (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])


def gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


if __name__ == "__main__":
    main()
