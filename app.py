"""app.py — a local web page for the whole job: photos in, a trained LoRA and videos out, the run visible as it goes.

    python app.py                      # http://127.0.0.1:7860, runs in ./runs
    python app.py --runs /data/runs --host 0.0.0.0 --port 8000

The page, top to bottom (Gradio):
  1. Photos     each photo comes back at once with its face box drawn, or the one-line error train.py would give;
                a warning when the photos do not look like one person — before any training starts.
  2. Settings   the model preset and the knobs a user changes, train.py's defaults for the preset, the estimated time.
  3. Run        Start launches train.py in a run folder as a subprocess (runs.py); Stop sends Ctrl-C's SIGINT;
                Resume continues with --resume. Every run under the runs folder is listed with its state read from
                its folder, so a restarted page finds its runs. Live: stage, step / total, ETA, the training curves
                and the repository scatter, GPU memory, the log's tail.
  4. Results    report.html, the eval table and contact sheets, the diffusers and ComfyUI LoRA files to download.
  5. Generate   prompts -> mp4s through generate.py (a subprocess too), shown in the page.

Safety: the page listens on 127.0.0.1 unless --host says otherwise; the browser names runs, never paths (runs.py
checks each name and serves only files inside the runs folder, Gradio's allowed_paths); uploads are checked for size
and type before a photo is read.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page calls nobody
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import runs  # noqa: E402
from faces import PHOTO_SUFFIXES, ReferencePhotoError, load_references, make_face_encoder, read_photo

MAX_PHOTO_MB = 20  # a face needs a few hundred pixels; a 20 MB JPEG is already ~50 Mpx
MODELS = ["tiny", "wan-1.3b", "wan-14b", "cogvideox-2b", "cogvideox-5b"]
KNOBS = ["identity_steps", "dpo_identity_steps", "videos_per_prompt"]  # the preset's defaults the page shows
_encoder = None


# ---------------------------------------------------------------------- 1. photos

def check_photos(paths: list[str]) -> tuple[list[tuple[np.ndarray, str]], list[str], str]:
    """Each uploaded photo -> (the photo with its face box drawn, a caption), the usable ones' paths, and a
    message: the errors train.py would give, and a warning if the usable photos look like different people."""
    shown, good, notes = [], [], []
    for path in paths or []:
        error = photo_error(Path(path))
        if error:
            notes.append(f"✗ {Path(path).name}: {error}")
            continue
        image = read_photo(Path(path))
        box = max(face_encoder().find_faces(image, thorough=True), key=lambda face: face.area).box
        shown.append((draw_box(image, box), f"{Path(path).name}: face found"))
        good.append(path)
    if len(good) > 1:
        warning = different_people(load_references(good, face_encoder()))
        if warning:
            notes.append(f"⚠ {warning}")
    if good and not notes:
        notes.append(f"✓ {len(good)} photo(s) ready")
    return shown, good, "\n\n".join(notes)


def photo_error(path: Path) -> str | None:
    """Why train.py could not use this photo (its own message), or None. Size and type come first: nothing
    over MAX_PHOTO_MB or with another suffix is opened."""
    if path.suffix.lower() not in PHOTO_SUFFIXES:
        return f"not a photo file ({path.suffix or 'no suffix'}): give one of {', '.join(sorted(PHOTO_SUFFIXES))}"
    megabytes = path.stat().st_size / 2**20
    if megabytes > MAX_PHOTO_MB:
        return f"{megabytes:.0f} MB is more than the page takes ({MAX_PHOTO_MB} MB): resize it, e.g. to 4000 px"
    try:
        load_references([path], face_encoder())
    except ReferencePhotoError as error:
        return str(error)
    return None


def draw_box(image: np.ndarray, box) -> np.ndarray:
    """image [H, W, 3] uint8 with the face box (x0, y0, x1, y1) drawn in green, 1/150 of the long side thick."""
    picture = Image.fromarray(image)
    ImageDraw.Draw(picture).rectangle([float(v) for v in box], outline=(40, 220, 60), width=max(2, max(image.shape[:2]) // 150))
    return np.asarray(picture)


def different_people(refs) -> str | None:
    """faces.different_people_message (helper "idreward"), where this checkout has it."""
    try:
        from faces import different_people_message
    except ImportError:
        return None
    return different_people_message(refs)


def face_encoder():
    global _encoder
    if _encoder is None:  # dlib's models load once, on the first photo
        _encoder = make_face_encoder("auto")
    return _encoder


# ---------------------------------------------------------------------- 2. settings

def train_flags(model, identity_steps, dpo_steps, videos_per_prompt, seed, judge, extra) -> list[str]:
    """The page's settings as train.py flags (without --ref, --out, --prompts)."""
    flags = ["--model", model, "--identity-steps", str(int(identity_steps)), "--dpo-identity-steps", str(int(dpo_steps)),
             "--dpo-dynamic-steps", str(int(dpo_steps)), "--videos-per-prompt", str(int(videos_per_prompt)),
             "--seed", str(int(seed))]
    if (judge or "").strip():
        flags += ["--judge", judge.strip()]
    return flags + shlex.split(extra or "")


def flag_error(argv: list[str]) -> str | None:
    """flags.train_flag_error (helper "flags"): the one-line error train.py would print, where this checkout has it."""
    try:
        from flags import train_flag_error
    except ImportError:
        return None
    return train_flag_error(argv)


def preset_text(model: str) -> tuple[str, int, int, int]:
    """train.py's defaults for the model's preset: a line to show, and the three knobs' values."""
    from cli import PRESETS, preset_name
    preset = PRESETS[preset_name(model)]
    shown = ", ".join(f"{key.replace('_', '-')} {value}" for key, value in preset.items())
    estimate = runs.estimate_minutes(gpu_name(), model, preset)
    when = f"~{estimate:.0f} min on this {gpu_name()}" if estimate else "unknown on this machine (measured for an H100 with wan-1.3b)"
    text = f"**train.py's defaults for `{model}`** ({preset_name(model)} preset): {shown}.\n\nEstimated time: {when}."
    return text, preset["identity_steps"], preset["dpo_identity_steps"], preset["videos_per_prompt"]


def gpu_name() -> str | None:
    line = _nvidia_smi("name")
    return line or None


def gpu_memory() -> str:
    line = _nvidia_smi("memory.used,memory.total")
    return f"GPU memory: {line}" if line else "GPU memory: no GPU found (nvidia-smi)"


def _nvidia_smi(query: str) -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


# ---------------------------------------------------------------------- 3-4. runs and results

def status_text(status: runs.RunStatus) -> str:
    progress = f"**{status.stage}** {status.step} / {status.total}" if status.total else "starting"
    eta = f", about {status.eta} left in this stage" if status.eta and status.status == "running" else ""
    done = f"\n\nstages done: {', '.join(status.done)}" if status.done else ""
    note = f"\n\n{status.message}" if status.message else ""
    return f"### {status.name}: {status.status}\n\n{progress}{eta}{done}{note}\n\n{gpu_memory()}"


CURVES = ("loss", "implicit_accuracy", "reward_margin")


def curves(folder: Path):
    """log.jsonl's loss, implicit accuracy and reward margin against the training steps so far (every stage one
    after the other), one colour a stage: a matplotlib figure."""
    series, path, position = {}, folder / "log.jsonl", 0  # series[(stage, metric)] = ([position], [value])
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if "loss" not in record:
            continue
        position += 1
        for metric in CURVES:
            if metric in record:
                xs, ys = series.setdefault((record["stage"], metric), ([], []))
                xs.append(position)
                ys.append(record[metric])
    colours = {stage: f"C{i}" for i, stage in enumerate(dict.fromkeys(stage for stage, _ in series))}
    figure = Figure(figsize=(7, 3), layout="constrained")
    for axis, metric in zip(figure.subplots(1, 3), CURVES):
        for (stage, name), (xs, ys) in series.items():
            if name == metric:
                axis.plot(xs, ys, marker="." if len(xs) < 3 else None, color=colours[stage], label=stage)
        axis.set_title(metric.replace("_", " "), fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    if series:
        figure.axes[0].legend(fontsize=7)
    return figure


def scatter(folder: Path):
    """The repository so far: r_id against r_dyn of every video, one colour a source (a matplotlib figure)."""
    index = runs.run_file(folder.parent, folder.name, "repository/index.json")
    entries = json.loads(index.read_text()).values() if index else []
    figure = Figure(figsize=(4.5, 2.6), layout="constrained")
    axis = figure.subplots()
    for source in sorted({e["source"] for e in entries if "rewards" in e}):
        points = [(e["rewards"]["r_dyn"], e["rewards"]["r_id"]) for e in entries
                  if "rewards" in e and e["source"] == source]
        axis.scatter(*zip(*points), s=14, label=source)
    axis.set_xlabel("r_dyn (px)", fontsize=8)
    axis.set_ylabel("r_id", fontsize=8)
    axis.tick_params(labelsize=7)
    if axis.collections:
        axis.legend(fontsize=7)
    return figure


def log_tail(folder: Path, lines: int = 25) -> str:
    """train.log's last lines, each at its latest progress update (tqdm rewrites a line with \\r)."""
    text = runs.read_tail(folder / runs.LOG_FILE)
    shown = []
    for line in text.split("\n")[-lines:]:  # not splitlines(): it splits at \r too
        shown += [update for update in line.split("\r") if update.strip()][-1:]
    return "\n".join(shown)


def results(runs_dir: Path, name: str):
    """(report link, eval table, contact sheets, diffusers LoRA, ComfyUI LoRA) of a run; None where absent."""
    report = runs.run_file(runs_dir, name, "report.html")
    link = f"[Open the report](/gradio_api/file={report})" if report else "The report appears here when the run finishes."
    table = runs.run_file(runs_dir, name, "eval/table.md")
    sheets = sorted(str(p) for p in (runs.run_folder(runs_dir, name) / "eval").glob("*_p*_s*.png"))
    return (link, table.read_text() if table else "",
            [s for s in sheets if runs.run_file(runs_dir, name, Path(s).relative_to(runs.run_folder(runs_dir, name)))],
            runs.run_file(runs_dir, name, "magicid_lora/pytorch_lora_weights.safetensors"),
            runs.run_file(runs_dir, name, "magicid_lora/magicid_lora_comfy.safetensors"))


def generate_videos(runs_dir: Path, name: str, prompts: str, steps: int):
    """generate.py with the run's MagicID LoRA on the typed prompts ({person} allowed): mp4s in <run>/generated."""
    lora = runs.run_file(runs_dir, name, "magicid_lora/pytorch_lora_weights.safetensors")
    if lora is None:
        raise gr.Error(f"{name} has no MagicID LoRA yet: let the run finish first")
    out = runs.run_folder(runs_dir, name) / "generated"
    out.mkdir(exist_ok=True)
    (out / "prompts.txt").write_text(prompts.strip() + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(runs.REPO / "generate.py"), "--lora", str(lora.parent), "--prompts",
                           str(out / "prompts.txt"), "--out", str(out), "--steps", str(int(steps))],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise gr.Error((done.stderr.strip().splitlines() or ["generate.py failed"])[-1])
    return sorted(str(p) for p in out.glob("*.mp4"))


# ---------------------------------------------------------------------- the page

def build_page(runs_dir: Path) -> gr.Blocks:
    runs_dir.mkdir(parents=True, exist_ok=True)
    names = lambda: [status.name for status in runs.list_runs(runs_dir)]  # noqa: E731
    default_text, *default_knobs = preset_text("tiny")
    with gr.Blocks(title="magicid") as page:
        gr.Markdown("# magicid — photos in, a LoRA and videos out")
        photo_paths = gr.State([])
        with gr.Row():
            with gr.Column():
                gr.Markdown("## 1. Photos")
                uploads = gr.File(label="photos of one person", file_count="multiple", file_types=sorted(PHOTO_SUFFIXES))
                photo_notes = gr.Markdown(elem_id="photo-notes")
                faces_shown = gr.Gallery(label="faces found", columns=4, height=220)
                gr.Markdown("## 2. Settings")
                model = gr.Dropdown(MODELS, value="tiny", label="model", allow_custom_value=True)
                defaults = gr.Markdown(default_text)
                with gr.Row():
                    identity_steps = gr.Number(default_knobs[0], label="identity steps", precision=0)
                    dpo_steps = gr.Number(default_knobs[1], label="DPO steps (each rule)", precision=0)
                    videos_per_prompt = gr.Number(default_knobs[2], label="videos per prompt", precision=0)
                    seed = gr.Number(0, label="seed", precision=0)
                prompts = gr.Textbox((runs.REPO / "prompts" / "train.txt").read_text(), lines=4,
                                     label="repository prompts, one a line ({person} = the person)")
                judge = gr.Textbox(label="prompt judge (clip:DIR or vlm:DIR, a local folder; empty: off)")
                extra = gr.Textbox(label="more train.py flags (python train.py --help)", elem_id="extra-flags")
                run_name = gr.Textbox("me", label="run name (a folder under the runs folder)", elem_id="run-name")
                start = gr.Button("Start", variant="primary")
            with gr.Column():
                gr.Markdown(f"## 3. Runs in `{runs_dir}`")
                chosen = gr.Dropdown(names(), value=(names() or [None])[0], label="run", allow_custom_value=False)
                status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    stop = gr.Button("Stop")
                    resume = gr.Button("Resume")
                message = gr.Markdown(elem_id="run-message")
                curve_plot = gr.Plot(label="training curves", format="png")
                scatter_plot = gr.Plot(label="repository: identity against motion", format="png")
                log = gr.Textbox(label="log", lines=8, max_lines=8, elem_id="run-log")
                gr.Markdown("## 4. Results")
                report_link = gr.Markdown(elem_id="report-link")
                with gr.Accordion("eval table (eval/table.md)", open=False):
                    table = gr.Markdown()
                sheets = gr.Gallery(label="held-out videos (contact sheets)", columns=1, height=260)
                with gr.Row():
                    lora_file = gr.DownloadButton("LoRA (diffusers)", visible=False, elem_id="download-lora")
                    comfy_file = gr.DownloadButton("LoRA (ComfyUI)", visible=False, elem_id="download-comfy")
                gr.Markdown("## 5. Generate")
                gen_prompts = gr.Textbox("{person} walking on a beach", lines=2, label="prompts, one a line")
                gen_steps = gr.Number(12, label="denoising steps", precision=0, elem_id="gen-steps")
                generate = gr.Button("Generate")
                videos = gr.Gallery(label="videos", columns=2, height=260, elem_id="videos")

        def on_photos(files):
            shown, good, notes = check_photos([getattr(f, "name", f) for f in files or []])
            return shown, good, notes

        def on_model(name):
            text, *knobs = preset_text(name)
            return text, *knobs

        def on_start(paths, *settings):
            *knobs, prompt_text, name = settings
            flags = train_flags(*knobs)
            error = flag_error(["--ref", "photo.jpg", *flags, "--out", "run"])
            if error:
                raise gr.Error(error)
            try:
                runs.start_run(runs_dir, name, [Path(p) for p in paths], flags, prompts=prompt_text)
            except runs.RunsError as error:
                raise gr.Error(str(error))
            return gr.update(choices=names(), value=name.strip()), f"started {name}"

        def on_stop(name):
            try:
                runs.stop_run(runs_dir, name)
            except runs.RunsError as error:
                return str(error)
            return f"stopping {name} (Ctrl-C): it exits after the step it is in"

        def on_resume(name):
            try:
                runs.resume_run(runs_dir, name)
            except runs.RunsError as error:
                return str(error)
            return f"resumed {name}"

        def refresh(name, seen):
            """Every output of the chosen run; the plots and results only when its files changed (seen: the
            last (run, log.jsonl, repository, report) signature this browser got), so a tick costs little."""
            if not name:
                return ("No run yet: add photos and press Start.", None, None, "", "", "", [],
                        gr.update(visible=False), gr.update(visible=False), None)
            folder = runs.existing_run(runs_dir, name)
            changed = [name] + [_signature(folder / f) for f in ("log.jsonl", "repository/index.json", "report.html")]
            if changed == seen:
                return (status_text(runs.run_status(folder)), gr.skip(), gr.skip(), log_tail(folder),
                        *[gr.skip()] * 5, seen)
            link, eval_table, contact_sheets, lora, comfy = results(runs_dir, name)
            return (status_text(runs.run_status(folder)), curves(folder), scatter(folder), log_tail(folder), link,
                    eval_table, contact_sheets, gr.update(value=lora, visible=lora is not None),
                    gr.update(value=comfy, visible=comfy is not None), changed)

        def on_generate(name, text, steps):
            return generate_videos(runs_dir, name, text, steps)

        uploads.change(on_photos, uploads, [faces_shown, photo_paths, photo_notes])
        model.change(on_model, model, [defaults, identity_steps, dpo_steps, videos_per_prompt])
        start.click(on_start, [photo_paths, model, identity_steps, dpo_steps, videos_per_prompt, seed, judge, extra,
                               prompts, run_name], [chosen, message])
        stop.click(on_stop, chosen, message)
        resume.click(on_resume, chosen, message)
        generate.click(on_generate, [chosen, gen_prompts, gen_steps], videos)
        seen = gr.State(None)
        shown = [status, curve_plot, scatter_plot, log, report_link, table, sheets, lora_file, comfy_file, seen]
        chosen.change(refresh, [chosen, gr.State(None)], shown)
        gr.Timer(2.0).tick(refresh, [chosen, seen], shown)
        page.load(lambda: gr.update(choices=names()), None, chosen)
    return page


def _signature(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="the runs folder: every run the page starts or lists lives here")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network; careful)")
    parser.add_argument("--port", type=int, default=7860, help="port")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs).resolve()
    build_page(runs_dir).launch(server_name=args.host, server_port=args.port, allowed_paths=[str(runs_dir)],
                                max_file_size=f"{MAX_PHOTO_MB}mb", show_error=True)


if __name__ == "__main__":
    main()
