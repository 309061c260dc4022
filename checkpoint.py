"""checkpoint.py — a run folder that survives being killed at any moment.

A training run is a sequence of stages (identity, dpo_identity_round0, ...), each a loop of steps.
`Run.train` is that loop, written once for every stage:

    for step in start..steps:   lr = lr_max · min(1, (step + 1) / warmup)
                                loss = step_fn(step);  AdamW step on the trainable LoRA
                                every N steps and at the end: checkpoint (LoRA + AdamW moments + step)

Nothing random is carried between steps: step_fn draws its batch, timestep and noise from
`step_seed(stage, step)`. So a checkpoint needs no RNG state, and a resumed run repeats exactly
the steps an uninterrupted one would take (bitwise on a CPU).

On disk (all safetensors or JSON: nothing is unpickled):
    <run>/state.json                       finished stages and the latest checkpoint of each stage
    <run>/checkpoints/<stage>/step-NNNNNN/ lora.safetensors, optimizer.safetensors, meta.json
    <run>/<name>_lora/                     finished LoRAs in diffusers format (identity, magicid)
    <run>/log.jsonl                        every logged metric, one JSON object per line
Every file is written under a temporary name and moved into place (os.replace), and state.json
is replaced last: a kill leaves the previous consistent state.

Exports: Run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import parallel


class Run:
    def __init__(self, out: str, config: dict, resume: bool):
        self.dir = Path(out)
        state_file = self.dir / "state.json"
        if state_file.exists() and not resume:
            sys.exit(f"error: {self.dir} already holds a run; pass --resume to continue it, or choose another --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = json.loads(state_file.read_text()) if state_file.exists() else {"done": [], "latest": {}}
        if resume and not state_file.exists():
            print(f"nothing to resume in {self.dir} yet: starting the run from the beginning")
        parallel.barrier()  # every process has read the state before the main one writes anything
        self.seed = int(config["seed"])
        self.main = parallel.is_main()  # only the main process writes; the others compute and wait
        self.write_json("config.json", config)

    # ------------------------------------------------------------------ the training loop of every stage

    def train(self, stage: str, model, steps: int, batch_size: int, lr: float, warmup: int, every: int,
              item_loss) -> None:
        """Optimize the trainable adapter ("default") for `steps` steps.

        Each step's global batch is the items 0..batch_size−1; item_loss(step, i) -> (loss, metrics)
        computes one. Items are spread over processes (parallel.py) and each one is backpropagated on
        its own (gradient accumulation), so memory holds one item's activations whatever the batch.
        """
        params = model.lora_parameters("default")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        start = self._restore(stage, params, optimizer)
        if stage in self.state["done"] or steps == 0:
            self._finish(stage)
            return
        rank, world = parallel.rank_and_world()
        bar = tqdm(range(start, steps), desc=stage, unit="step", initial=start, total=steps, disable=not self.main)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
            optimizer.zero_grad(set_to_none=False)
            totals = {}
            for item in range(rank, batch_size, world):
                loss, metrics = item_loss(step, item)
                (loss / batch_size).backward()
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
            parallel.sum_across([p.grad for p in params])  # Σ over processes of Σ over their items
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            keys = sorted(totals)
            means = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=params[0].device)
            parallel.sum_across([means])
            metrics = {k: v / batch_size for k, v in zip(keys, means.tolist())}
            self.log(stage, step, {**metrics, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item()})
            if (step + 1) % every == 0 or step + 1 == steps:
                self._save_checkpoint(stage, step + 1, params, optimizer)
        self._finish(stage)

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
        model.save_lora(str(partial), name="default")
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
        _atomic_write_text(self.dir / name, json.dumps(obj, indent=1, default=float))

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, stage: str, step: int, params, optimizer) -> None:
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

    def _restore(self, stage: str, params, optimizer) -> int:
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

    def _finish(self, stage: str) -> None:
        if stage not in self.state["done"]:
            self.state["done"].append(stage)
            if self.main:
                self._write_state()

    def _write_state(self) -> None:
        _atomic_write_text(self.dir / "state.json", json.dumps(self.state, indent=1))


def _atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
