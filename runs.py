"""runs.py — the page's runs: folders under one runs folder, each a train.py run the page can start, stop, resume.

The run folder is the job's state (run.py): state.json, log.jsonl, config.json, the .lock that the train.py working
in it holds, report.html once it finished. So the page keeps nothing of its own beyond what it writes there:
    <run>/photos/         the uploaded photos, copied: a resume after a server restart still has them
    <run>/prompts.txt     the repository prompts typed in the page
    <run>/command.json    the train.py flags the run was started with; Resume repeats them with --resume
    <run>/train.log       train.py's stdout and stderr (tqdm's progress lines: stage, step / total, ETA)
and a restarted page reads every run's status from its folder (run_status):
    running   the .lock is held (flock): a train.py works in the folder, started by this page or not
    finished  report.html exists
    stopped   Ctrl-C (SIGINT, what Stop sends) ended it: train.py printed "interrupted"
    failed    it ended any other way; the last line of train.log says why

Training is always a subprocess in its own session, never in the page's process: a crash of training cannot take
the page down, and a page stopped with Ctrl-C leaves its runs going (a new page finds them running by their lock).

Every path the browser names goes through run_folder / run_file: a run name is one plain folder name, and a file
is served only where it resolves inside the runs folder.

Exports: RunStatus, list_runs, run_status, start_run, stop_run, resume_run, run_folder, existing_run, run_file,
train_argv, read_tail, estimate_minutes, RunsError.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent
TRAIN_SCRIPT = REPO / "train.py"  # what a run executes (the browser test swaps in train.py held at a known point)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one folder name: no "/", no "..", no leading dot
# tqdm's line: "identity:  33%|███▎      | 2/6 [00:00<00:02,  1.99step/s]" -> stage, step, total, elapsed, left
TQDM_LINE = re.compile(r"([A-Za-z_][\w ]*?):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")
LOG_FILE, COMMAND_FILE = "train.log", "command.json"
_processes: dict[str, subprocess.Popen] = {}  # runs this page started, by folder: reaped when their status is read


class RunsError(ValueError):
    """What the page cannot do with a run (bad name, already running, ...); the message says what to do."""


@dataclass
class RunStatus:
    name: str
    status: str            # running | finished | stopped | failed
    stage: str = ""        # the stage the progress line names ("identity", "repository round 0", ...)
    step: int = 0
    total: int = 0
    eta: str = ""          # tqdm's estimate of the stage's time left, "mm:ss"
    done: tuple = ()       # training stages finished (state.json)
    message: str = ""      # why it failed, or how it stopped


def list_runs(runs_dir: Path) -> list[RunStatus]:
    """Every run folder under runs_dir (a folder with config.json, state.json or train.log), newest first."""
    runs_dir = Path(runs_dir)
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name)
               and any((p / f).exists() for f in ("config.json", "state.json", LOG_FILE))] if runs_dir.is_dir() else []
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [run_status(folder) for folder in folders]


def run_status(folder: Path) -> RunStatus:
    """The run's status and progress, read from its folder alone."""
    folder = Path(folder)
    process = _processes.get(str(folder))
    if process is not None and process.poll() is not None:  # ended: reap it, the folder says how
        del _processes[str(folder)]
    state = _read_json(folder / "state.json") or {}
    log_tail = read_tail(folder / LOG_FILE)
    status = RunStatus(folder.name, "failed", done=tuple(state.get("done", ())))
    progress = [m for m in TQDM_LINE.finditer(log_tail)]
    if progress:
        stage, step, total, _, eta = progress[-1].groups()
        status.stage, status.step, status.total, status.eta = stage, int(step), int(total), eta
    else:  # a run started outside the page: its log.jsonl says how far training got
        status.stage, status.step, status.total = _progress_from_log(folder)
    lines = [line.strip() for line in re.split(r"[\r\n]", log_tail) if line.strip()]
    if _locked(folder):
        status.status = "running"
    elif (folder / "report.html").exists():
        status.status, status.message = "finished", "the report is ready"
    elif any(line.startswith("interrupted") for line in lines[-3:]):
        status.status, status.message = "stopped", "stopped: Resume continues it where it stopped"
    else:
        status.message = lines[-1] if lines else "ended without a word (killed?): Resume continues it"
    return status


def start_run(runs_dir: Path, name: str, photos: list[Path], flags: list[str], prompts: str | None = None):
    """A new run `name`: photos copied in, train.py started on them with `flags` (train.py's own, without --ref,
    --out, --prompts); returns the run folder. prompts: the repository prompts, one a line ({person} allowed)."""
    folder = run_folder(runs_dir, name)
    if folder.exists():
        raise RunsError(f"a run named {name!r} exists: resume it, or give the new run another name")
    if not photos:
        raise RunsError("add at least one photo of the person first")
    (folder / "photos").mkdir(parents=True)
    argv = []
    for i, photo in enumerate(photos):
        copy = folder / "photos" / f"{i:02d}{Path(photo).suffix.lower()}"
        shutil.copyfile(photo, copy)
        argv += ["--ref", str(copy.relative_to(folder))]
    if prompts is not None:
        (folder / "prompts.txt").write_text(prompts.strip() + "\n", encoding="utf-8")
        argv += ["--prompts", "prompts.txt"]
    argv += list(flags)
    (folder / COMMAND_FILE).write_text(json.dumps({"argv": argv}, indent=1))
    _launch(folder, argv)
    return folder


def resume_run(runs_dir: Path, name: str) -> Path:
    """Continue a stopped or failed run: the flags it was started with, and --resume (train.py's exact resume)."""
    folder = existing_run(runs_dir, name)
    if _locked(folder):
        raise RunsError(f"{name} is running already: stop it first, or wait for it to end")
    command = _read_json(folder / COMMAND_FILE)
    if command is None:
        raise RunsError(f"{name} was not started from this page (no {COMMAND_FILE}): continue it from a terminal "
                        f"with its train.py command and --resume")
    began = (folder / "config.json").exists()  # train.py writes it when the run begins; before, there is nothing
    _launch(folder, command["argv"] + (["--resume"] if began else []))  # to resume: it starts again, from the start
    return folder


def stop_run(runs_dir: Path, name: str) -> None:
    """Send what Ctrl-C sends (SIGINT) to the train.py holding the run's lock: it saves nothing half-made and
    exits with "interrupted: continue with ...", and Resume takes it on from its last checkpoint."""
    folder = existing_run(runs_dir, name)
    process = _processes.get(str(folder))
    pid = process.pid if process is not None and process.poll() is None else _lock_holder(folder)
    if pid is None:
        raise RunsError(f"{name} is not running")
    os.kill(pid, signal.SIGINT)


def train_argv(argv: list[str]) -> list[str]:
    """The command the page runs in a run folder: this Python, train.py, the flags, --out the folder."""
    return [sys.executable, str(TRAIN_SCRIPT), *argv, "--out", "."]


def _launch(folder: Path, argv: list[str]) -> None:
    """train.py in the run folder (so --ref photos/.. and --out . stay inside it), in a session of its own,
    its output appended to train.log."""
    previous = _processes.get(str(folder))
    if previous is not None:
        previous.poll()  # reap the start before this one, or it stays a zombie while the page lives
    with open(folder / LOG_FILE, "ab") as log:
        log.write(f"\n$ train.py {' '.join(argv)}\n".encode())
        log.flush()
        _processes[str(folder)] = subprocess.Popen(
            train_argv(argv), cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


# ---------------------------------------------------------------------- paths from the browser

def run_folder(runs_dir: Path, name: str) -> Path:
    """runs_dir/name for a name that is one plain folder name; RunsError otherwise."""
    name = (name or "").strip()
    if not NAME_PATTERN.fullmatch(name):
        raise RunsError(f"{name!r} is not a run name: use letters, digits, '.', '_' or '-' (up to 64, "
                        f"not starting with '.' or '-')")
    return Path(runs_dir).resolve() / name


def existing_run(runs_dir: Path, name: str) -> Path:
    folder = run_folder(runs_dir, name)
    if not folder.is_dir():
        raise RunsError(f"no run named {name!r} in {runs_dir}")
    return folder


def run_file(runs_dir: Path, name: str, relative: str) -> Path | None:
    """A file of run `name`, or None: never a path outside the runs folder (no "..", no absolute path, no link
    pointing out), whatever `relative` says."""
    root = Path(runs_dir).resolve()
    path = (run_folder(runs_dir, name) / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


# ---------------------------------------------------------------------- reading a folder

def _locked(folder: Path) -> bool:
    """Whether a train.py holds the folder's lock (run.RunLock): try to take it, and let it go at once."""
    try:
        with open(folder / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _lock_holder(folder: Path) -> int | None:
    if not _locked(folder):
        return None
    text = (folder / ".lock").read_text().strip()
    return int(text) if text.isdigit() else None


def _progress_from_log(folder: Path) -> tuple[str, int, int]:
    """(stage, steps done, steps of the stage) of the last training stage log.jsonl has records of."""
    config, last = _read_json(folder / "config.json") or {}, None
    path = folder / "log.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if record.get("stage") != "setup":
            last = record
    if last is None:
        return "", 0, 0
    key = "identity_steps" if last["stage"] == "identity" else re.sub(r"_round\d+$", "_steps", last["stage"])
    return last["stage"], last["step"] + 1, int(config.get(key) or 0)


def read_tail(path: Path, size: int = 8192) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode("utf-8", errors="replace")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------- how long a run takes

# Per-unit seconds of train.py at the published preset (33 frames) on one H100 with Wan2.1-1.3B, as
# bench/time_to_lora.py measured them (bench/NOTES.md, "Time-to-LoRA", the shipped-preset row).
H100_WAN13B_SECONDS = dict(static_video=7.5, identity_step=0.59, repository_video=13.8, dpo_step=1.30,
                           report_video=16.8, once=60.0)


def estimate_minutes(gpu: str | None, model: str, settings: dict) -> float | None:
    """Minutes a run with these train.py settings takes, where measured figures exist (an H100 running
    wan-1.3b at 33 frames); None elsewhere: the page says "unknown" rather than guess."""
    if not gpu or "H100" not in gpu or model != "wan-1.3b" or settings.get("frames", 33) != 33:
        return None
    s, rounds = H100_WAN13B_SECONDS, settings.get("rounds", 1)
    videos = settings["num_prompts"] * settings["videos_per_prompt"] * (1 + rounds)  # initial + each round's
    seconds = (s["once"] + settings["static_videos"] * s["static_video"] + settings["identity_steps"] * s["identity_step"]
               + videos * s["repository_video"]
               + rounds * (settings["dpo_identity_steps"] + settings["dpo_dynamic_steps"]) * s["dpo_step"]
               + 3 * settings["eval_prompts"] * settings["eval_seeds"] * s["report_video"])
    return seconds / 60
