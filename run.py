"""run.py — a run folder that survives being killed at any moment: checkpoints, logs, settings, a lock.

A training run (train.py) is a sequence of stages (identity, dpo_identity_round0, ...), each a loop of
optimizer steps (train.optimize). Nothing random is carried between steps: a step draws its batch,
timestep and noise from `step_seed(stage, step)`, a pure function of its position. So a checkpoint needs
no RNG state, and a resumed run repeats exactly the steps an uninterrupted one would take (bitwise on a CPU).

On disk (all safetensors or JSON: nothing is unpickled):
    <run>/state.json                       finished stages and the latest checkpoint of each stage
    <run>/checkpoints/<stage>/step-NNNNNN/ lora.safetensors, optimizer.safetensors, meta.json
    <run>/repository/                      every generated or static video: latents, rewards (repository.py)
    <run>/<name>_lora/                     finished LoRAs in diffusers format (identity, magicid)
    <run>/log.jsonl                        every logged metric, one JSON object per line
    <run>/settings.json                    what defines the run (run_settings); a --resume must match it
    <run>/timings.json                     wall seconds of each stage of this start (StageTimer)
    <run>/.lock                            held (flock) by the train.py working in the folder (RunLock)
Every file is written under a temporary name, fsynced and moved into place (atomic_write, os.replace),
and state.json is replaced last: a kill leaves the previous consistent state.

Exports: Run, RunLock, RunFolderError, StageTimer, StepLog, run_settings, disk_full, resume_command, atomic_write,
replacing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import parallel


class RunFolderError(ValueError):
    """The run folder cannot take this start (in use, finished, another run's); the message says what to do."""


class Run:
    """The run folder: where a stage starts (restore), what it leaves (save_checkpoint, finish, log)."""

    def __init__(self, out: str, config: dict, resume: bool, settings: dict | None = None,
                 timer: StageTimer | None = None):
        self.check_out(out, resume)
        self.dir = Path(out)
        self.timer = timer or StageTimer()  # its rows so far, and every later one, go to <run>/timings.json
        self.timer.path = self.dir / "timings.json"
        state_file = self.dir / "state.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = json.loads(state_file.read_text()) if state_file.exists() else {"done": [], "latest": {}}
        if resume and not state_file.exists():
            print(f"nothing to resume in {self.dir} yet: starting the run from the beginning")
        parallel.barrier()  # every process has read the state before the main one writes anything
        self.seed = int(config["seed"])
        self.token = config.get("token")  # recorded with the LoRAs, for generate.py
        self.main = parallel.is_main()  # only the main process writes; the others compute and wait
        if settings is not None and not (self.dir / SETTINGS_FILE).exists():  # written once, when the run starts
            self.write_json(SETTINGS_FILE, settings)
        self.write_json("config.json", config)

    @staticmethod
    def check_out(out: str, resume: bool, settings: dict | None = None) -> None:
        """Raise RunFolderError if `out` cannot take this run (call it before loading anything slow):
        a run is there and no --resume, or the run there was started with other `settings` (run_settings)."""
        if (Path(out) / "state.json").exists() and not resume:
            raise RunFolderError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        stored = Path(out) / SETTINGS_FILE
        if settings is None or not stored.exists():  # a new run, or one from before settings.json
            return
        before = json.loads(stored.read_text())
        changed = [key for key in settings  # a flag newer than the run is not compared
                   if key in before and _compared(key, before[key]) != _compared(key, settings[key])]
        if changed:
            raise RunFolderError(
                f"{out} holds a run started with other settings; continuing it with these would mix two runs:\n"
                + "".join(f"  {_flag(key)}: {_difference(key, before[key], settings[key])}\n" for key in changed)
                + f"Resume with the settings it was started with (all in {Path(out) / 'config.json'}); or start "
                  f"this run in a new --out, or in {out} after deleting it.")

    # ------------------------------------------------------------------ what a stage needs

    def is_done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def step_seed(self, stage: str, step: int, item: int = -1) -> int:
        """The seed of one step's (or one batch item's) random draws: a pure function of its position."""
        return (self.seed * 1_000_003 + zlib.crc32(stage.encode()) * 10_007 + step * 1_009 + item + 1) % 2**63

    # ------------------------------------------------------------------ outputs

    def save_stage_lora(self, model, name: str) -> None:
        if not self.main:
            parallel.barrier()
            return
        final = self.dir / f"{name}_lora"
        partial = self.dir / f".{name}_lora.partial"
        shutil.rmtree(partial, ignore_errors=True)
        model.save_lora(str(partial), name="default", info={"token": self.token} if self.token else None)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        parallel.barrier()

    def log(self, stage: str, step: int, metrics: dict) -> None:
        if not self.main:
            return
        with open(self.dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"stage": stage, "step": step, **metrics}) + "\n")

    def read_log(self) -> list[dict]:
        """The log with repeats removed: after a resume, the last record of each (stage, step) wins."""
        path = self.dir / "log.jsonl"
        records = {}
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            records[(record["stage"], record["step"])] = record
        return list(records.values())

    def write_json(self, name: str, obj) -> None:
        if not self.main:
            return
        atomic_write(self.dir / name, json.dumps(obj, indent=1, default=float))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, stage: str, step: int, params, optimizer) -> None:
        """The LoRA and AdamW moments after `step` optimizer steps of `stage` (call it after optimizer.step)."""
        if not self.main:  # every process holds the same weights and moments after the step
            return
        folder = self.dir / "checkpoints" / stage / f"step-{step:06d}"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file({f"p{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}, partial / "lora.safetensors")
        moments = {}
        for i, p in enumerate(params):
            for key, value in optimizer.state.get(p, {}).items():  # AdamW: step, exp_avg, exp_avg_sq
                moments[f"p{i}.{key}"] = value.detach().cpu().contiguous()
        save_file(moments, partial / "optimizer.safetensors")
        (partial / "meta.json").write_text(json.dumps({"stage": stage, "step": step}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        previous = self.state["latest"].get(stage)
        self.state["latest"][stage] = str(folder.relative_to(self.dir))
        self._write_state()
        if previous and previous != self.state["latest"][stage]:
            shutil.rmtree(self.dir / previous, ignore_errors=True)

    def restore(self, stage: str, params, optimizer) -> int:
        """Load the stage's latest checkpoint into params and optimizer; return the step to continue from."""
        latest = self.state["latest"].get(stage)
        if latest is None:
            return 0
        folder = self.dir / latest
        weights = load_file(folder / "lora.safetensors")
        moments = load_file(folder / "optimizer.safetensors")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(weights[f"p{i}"])
                state = {key.split(".", 1)[1]: value.to(p.device) for key, value in moments.items()
                         if key.split(".", 1)[0] == f"p{i}"}
                if state:
                    optimizer.state[p] = state
        return json.loads((folder / "meta.json").read_text())["step"]

    def finish(self, stage: str) -> None:
        """Mark `stage` done: a resumed run skips it."""
        if stage not in self.state["done"]:
            self.state["done"].append(stage)
            if self.main:
                self._write_state()

    def _write_state(self) -> None:
        atomic_write(self.dir / "state.json", json.dumps(self.state, indent=1))


class StageTimer:
    """Wall seconds of each stage: the time a user waits, stage by stage (bench/time_to_lora.py extrapolates a
    full run from a reduced one with them). Each `with timer(stage, units):` block adds a row
        {"stage", "units": videos or steps it did, "seconds", "started": epoch seconds}
    to `path` (rewritten after every block; a resumed run's file holds its own start only). CUDA runs ahead of
    the host, so the GPU is synchronized at both ends: a stage is charged its own work, not its predecessor's."""

    def __init__(self):
        self.rows, self.path, self.start = [], None, time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str, units: int = 1):
        start, started = _synchronized_clock(), time.time()
        yield
        self.rows.append({"stage": stage, "units": units, "seconds": _synchronized_clock() - start, "started": started})
        if self.path is not None and parallel.is_main():
            atomic_write(self.path, json.dumps(self.rows, indent=1))

    def table(self) -> str:
        """The rows summed per stage, and the wall time since the timer was made (the rest: saving, startup)."""
        totals = {}
        for row in self.rows:
            seconds, units = totals.get(row["stage"], (0.0, 0))
            totals[row["stage"]] = (seconds + row["seconds"], units + row["units"])
        lines = [f"{'stage':<26} {'units':>6} {'seconds':>9}"]
        lines += [f"{stage:<26} {units:>6} {seconds:>9.1f}" for stage, (seconds, units) in totals.items()]
        return "\n".join(lines + [f"{'wall time so far':<26} {'':>6} {time.perf_counter() - self.start:>9.1f}"])


class StepLog:
    """A training stage's log.jsonl records, each written one step late, so the host never waits for the GPU
    mid-loop: it prepares step k + 1 (data, adapter switches, launches) while the GPU still runs step k.

    add(step k) starts the copy of step k's metrics to the host, queued right behind step k's work, then writes
    step k − 1's record; its copy landed when step k − 1 was done. (A .tolist() at that point would queue a copy
    behind step k and wait for it too.) flush() writes the pending record now: before a checkpoint, so the log
    holds every step a checkpoint holds. A record's seconds run from the previous record's numbers to its own:
    one step's wall time, the first holding the compiling. (On a GPU the host sees numbers only when it looks, so
    a stage's last record, flushed right after the one before, gets what is left of the stage: often ~0.)"""

    def __init__(self, run: Run, stage: str, clock=time.perf_counter):
        self.run, self.stage, self.clock = run, stage, clock  # clock() -> seconds (a test gives its own)
        self.pending = None  # (step, metric names, their copy on its way to the host, its arrival, extra fields)
        self.last_arrival = clock()

    def add(self, step: int, names: list[str], values: torch.Tensor, **extra) -> None:
        """values: [len(names)] on the device of the step; extra: host numbers (the learning rate)."""
        copy = values.detach().to("cpu", non_blocking=True)
        if values.is_cuda:
            arrival = torch.cuda.Event()  # the moment is known when flush waits for it
            arrival.record()
        else:
            arrival = self.clock()  # computed on the host: the numbers are here now
        self.flush()
        self.pending = (step, names, copy, arrival, extra)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, names, copy, arrival, extra = self.pending
        if isinstance(arrival, torch.cuda.Event):
            arrival.synchronize()  # step `step`'s work, not the step queued after it
            arrival = self.clock()
        self.run.log(self.stage, step, {**dict(zip(names, copy.tolist())), **extra,
                                        "seconds": arrival - self.last_arrival})
        self.pending, self.last_arrival = None, arrival


def _synchronized_clock() -> float:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------------- what defines a run, and who works on it

SETTINGS_FILE = "settings.json"
# train.py flags that change how a run runs, not what it computes: a --resume may change them. Every other
# flag defines the run and must match when it resumes (a flag added later too, until it is listed here).
OPERATIONAL_FLAGS = {"out", "resume", "device", "bf16", "compile", "attention_backend", "low_memory",
                     "grad_checkpointing", "checkpoint_blocks", "offload_blocks", "checkpoint_every", "id_model_root"}


def run_settings(flags: dict, photos: list, id_backend: str, prompts: dict[str, list[str]]) -> dict:
    """What defines a run, as settings.json holds it: every flag outside OPERATIONAL_FLAGS, with the photos
    by content (--ref: name and sha256 of each file, in order), the ID backend that runs (not "auto"),
    and the prompts as read (not the files' paths): {"prompts": [...], "heldout_prompts": [...]}."""
    settings = {key: value for key, value in flags.items() if key not in OPERATIONAL_FLAGS}
    settings["ref"] = [{"file": Path(p).name, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
                       for p in photos]
    settings.update(id_backend=id_backend, **prompts)
    return json.loads(json.dumps(settings))  # as the file holds it: tuples become lists


def _compared(key, value):
    """A photo is the same photo under another name: --ref compares contents only."""
    return [photo["sha256"] for photo in value] if key == "ref" else value


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _difference(key: str, before, now) -> str:
    if key == "ref":
        def show(photos):
            return ", ".join(f"{photo['file']} (sha256 {photo['sha256'][:12]})" for photo in photos)
        return f"the photos differ: was {show(before)}, now {show(now)}"
    if isinstance(before, list) and isinstance(now, list) and key.endswith("prompts"):
        if len(before) != len(now):
            return f"was {len(before)} prompts, now {len(now)}"
        i = next(i for i, (a, b) in enumerate(zip(before, now)) if a != b)
        return f"prompt {i + 1} was {before[i]!r}, now {now[i]!r}"
    return f"was {before}, now {now}"


class RunLock:
    """One train.py per run folder: an advisory lock (flock) on <run>/.lock, held while the process lives.

    Only the main process locks; under `accelerate launch` the others follow it, and accelerate stops them
    all when it exits. A start that fails before the run begins calls abandon(): a folder this start
    created is removed, so a failed start leaves nothing half-made behind.
    """

    def __init__(self, out: str):
        self.dir, self.created, self.handle = Path(out), False, None
        if not parallel.is_main():
            return
        self.created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.dir / ".lock", "a+", encoding="utf-8")
        except OSError as error:  # a file of that name, no permission, ...
            raise RunFolderError(f"cannot use {out} as the run folder ({error}): choose another --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(f"{out} is in use by another train.py (process {holder}): wait for it to end, "
                                 "or stop it and continue with --resume; or give this run another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")  # named in the message a second train.py gets
        handle.flush()
        self.handle = handle

    def abandon(self) -> None:
        """After a failed start: remove the folder if this start created it, and let it go."""
        if self.created:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let the folder go (a finished run, or a failed start): another train.py, in this process or
        another, may take it now. Without this the lock lasts as long as the process does."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is a full disk: OSError ENOSPC, or a library's wrapping of one."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def resume_command(argv: list[str], out: str) -> str:
    """The command that continues a run: the same flags, --out spelled out, and --resume."""
    argv = [arg for arg in argv if arg != "--resume"]
    if not any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        argv += ["--out", out]
    return shlex.join(["python", "train.py", *argv, "--resume"])


# ---------------------------------------------------------------------- atomic files

def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` whole or not at all: a temporary file, fsynced, then os.replace (atomic on POSIX)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside `path` for any writer; it replaces `path` only when the block succeeds.

    The temporary name is hidden (leading dot) and keeps the suffix, since writers like imageio pick the
    format from it: .<stem>.<pid>.tmp<suffix>.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
