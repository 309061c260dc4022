"""lora.py — LoRA adapters on the video transformer: one trainable, any number frozen, switched without copies.

A LoRA replaces a linear layer's W by W + (α/r)·B·A (A: [r, in], B: [out, r], B = 0 at the start, so a
fresh adapter changes nothing). MagicID needs three at once on one network: the trainable policy
("default"), the frozen DPO reference (the identity-stage LoRA: "reference"), and none at all (the base
model, for the repository's initial videos). peft holds them side by side; `adapter(name)` runs the
network with exactly one of them active, which is how DPO gets its reference without a second copy
of the weights. Files are diffusers' LoRA format (pytorch_lora_weights.safetensors), which a stock
pipeline's load_lora_weights reads; beside it, magicid.json records the base model the LoRA belongs to
(and train.py's --token), so generate.py needs only the LoRA's folder. A two-expert model (Wan2.2-A14B, experts.py)
has one LoRA per expert: LORA_FILE for `transformer` (high noise) and LORA_FILE_LOW_NOISE for `transformer_2`,
which a stock pipeline reads with load_lora_weights(folder, weight_name=LORA_FILE_LOW_NOISE,
load_into_transformer_2=True).

Exports: LoraAdapters (VideoModel's adapter half), LORA_TARGETS, LORA_FILE, LORA_INFO_FILE, copy_adapter,
find_lora, check_lora_file, ModelLoadError.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings

import torch

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
LORA_FILE_LOW_NOISE = "pytorch_lora_weights_low_noise.safetensors"  # Wan2.2-A14B's transformer_2
LORA_INFO_FILE = "magicid.json"                 # beside it: {"base_model": ..., "token": ...}
# Which linear layers a LoRA adapts (peft matches module names by suffix; both Wan's and CogVideoX's blocks
# name them so). Attention alone is the usual recipe for a pretrained video model; the toy world's tiny base,
# which has never seen a face, learns one only when its feed-forward layers adapt too (toyworld/README.md).
LORA_TARGETS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "attention+ffn": ("to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"),
}


class ModelLoadError(RuntimeError):
    """A model or LoRA could not be loaded; the message says what to do."""


class LoraAdapters:
    """The adapter methods of model.VideoModel; they use its `transformer`, `pipe`, `name` and `base_model`."""

    def _init_adapters(self) -> None:
        self._trainable_adapters: set[str] = set()
        self._tuner_layers: list = []  # peft's LoRA layers, found when an adapter is added
        self._lora_params: list = []   # (parameter, whether it trains) of every adapter

    def add_lora(self, rank: int, targets: str = "attention", name: str = "default", trainable: bool = True,
                 alpha: float | None = None, seed: int = 0) -> None:
        """Attach a fresh LoRA (B = 0, so the output is unchanged) to the layers of LORA_TARGETS[targets].

        A is drawn (peft: Kaiming-uniform) from `seed` on a forked RNG: the same seed gives the same LoRA
        whatever ran before, and the caller's random stream does not move.
        """
        from peft import LoraConfig

        config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(LORA_TARGETS[targets]),
                            init_lora_weights=True)
        for expert, transformer in enumerate(self.transformers):  # one LoRA per expert (experts.py), A from seed + expert
            device = transformer.device  # peft draws A where the layer lives: that device's generator
            with _several_adapters_expected(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + expert)
                transformer.add_adapter(config, adapter_name=name)
        self._register_adapter(name, trainable)

    def load_lora(self, lora_dir: str, name: str = "default", trainable: bool = False) -> None:
        """Load a LoRA saved by `save_lora` (or any diffusers LoRA for this backbone) as adapter `name`."""
        check_lora_file(lora_dir)
        two_experts = len(self.transformers) > 1
        if two_experts and not os.path.isfile(os.path.join(lora_dir, LORA_FILE_LOW_NOISE)):
            raise ModelLoadError(f"{lora_dir!r} has no {LORA_FILE_LOW_NOISE}: model {self.name!r} has two experts "
                                 "and needs a LoRA for each (one trained on a one-transformer model does not fit)")
        try:
            with _several_adapters_expected():
                self.pipe.load_lora_weights(lora_dir, adapter_name=name)
                if two_experts:  # the stock way to give transformer_2 its own LoRA
                    self.pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE_LOW_NOISE, adapter_name=name,
                                                load_into_transformer_2=True)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(f"the LoRA in {lora_dir!r} does not fit model {self.name!r}: {error}") from error
        self._register_adapter(name, trainable)

    def save_lora(self, lora_dir: str, name: str = "default", info: dict | None = None) -> None:
        """Write adapter `name` in the diffusers format that a stock pipeline's load_lora_weights reads,
        and LORA_INFO_FILE beside it: the base model (VideoModel.base_model) and `info`."""
        from peft.utils import get_peft_model_state_dict

        for transformer, weight_name in zip(self.transformers, (LORA_FILE, LORA_FILE_LOW_NOISE)):
            state = get_peft_model_state_dict(transformer, adapter_name=name)
            state = {key: value.detach().float().cpu().contiguous() for key, value in state.items()}
            metadata = transformer.peft_config[name].to_dict()
            type(self.pipe).save_lora_weights(lora_dir, transformer_lora_layers=state, weight_name=weight_name,
                                              transformer_lora_adapter_metadata=metadata, safe_serialization=True)
        with open(os.path.join(lora_dir, LORA_INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump({"base_model": self.base_model, **(info or {})}, handle, indent=1)

    def lora_parameters(self, name: str = "default") -> list[torch.nn.Parameter]:
        """The parameters of adapter `name` in the experts that train, in a fixed order (optimizers and checkpoints
        rely on it): expert 0's, then expert 1's."""
        tag = f".{name}."
        return [p for expert in self.trained_experts for key, p in self.transformers[expert].named_parameters()
                if "lora_" in key and tag in key]

    @contextlib.contextmanager
    def adapter(self, name: str | None):
        """Run with only adapter `name` active (None: the base model, every adapter off).

        This is how DPO gets its frozen reference without a second network: the same weights,
        another adapter switched on. Which parameters require grad never changes here.
        """
        previous = self._active_adapters()
        self._activate(name)
        try:
            yield
        finally:
            self._activate(previous)

    def set_adapter(self, name: str | None) -> None:
        """Make adapter `name` (or none) the one every later call uses."""
        self._activate(name)

    def _register_adapter(self, name: str, trainable: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        if trainable:
            self._trainable_adapters.add(name)
            for p in self.lora_parameters(name):  # LoRA weights train in fp32 whatever the backbone's dtype
                p.data = p.data.float()
        else:
            self._trainable_adapters.discard(name)
        # Found once here, not at every switch: walking the whole module tree twice per DPO step cost
        # ~50 ms of host time on the published 1.3B model (bench/NOTES.md).
        self._tuner_layers = [m for t in self.transformers for m in t.modules() if isinstance(m, BaseTunerLayer)]
        self._lora_params = [(p, expert in self.trained_experts and any(f".{n}." in key for n in self._trainable_adapters))
                             for expert, t in enumerate(self.transformers) for key, p in t.named_parameters()
                             if "lora_" in key]
        if len(self.transformers) > 1:  # experts.py: LoRA weights stay on the GPU whichever expert is there,
            for p, trains in self._lora_params:  # and trainable ones hold a gradient from the start (exact resume)
                p.data = p.data.to(self.device)
                if trains and p.grad is None:
                    p.grad = torch.zeros_like(p)
        self._activate(name)

    def _active_adapters(self):
        if not self._tuner_layers or self._tuner_layers[0].disable_adapters:
            return None
        return self._tuner_layers[0].active_adapters[0]

    def _activate(self, name: str | None) -> None:
        # Host time matters here: DPO switches four times a step, and peft's calls walk every adapter's weights.
        # So each layer gets only the calls that change something (enable_adapters(True) would set_adapter again).
        for module in self._tuner_layers:
            if name is None:
                if not module.disable_adapters:
                    module.enable_adapters(False)
            elif module.disable_adapters or module.active_adapters != [name]:
                module.set_adapter(name)
                if module.disable_adapters:
                    module.enable_adapters(True)
        # peft ties requires_grad to "active"; we tie it to "trainable" instead, so switching to the
        # reference adapter for a no-grad forward does not silently change what the optimizer trains.
        for p, trains in self._lora_params:
            p.requires_grad_(trains)


def copy_adapter(model, source: str, target: str) -> None:
    """Overwrite adapter `target`'s weights with adapter `source`'s (same rank and layers): online rounds
    make the round's result the next round's DPO reference this way."""
    with torch.no_grad():
        for src, dst in zip(model.lora_parameters(source), model.lora_parameters(target), strict=True):
            dst.copy_(src)


def find_lora(path: str) -> tuple[str, dict]:
    """A LoRA as a person names it -> (the folder holding its weights, what LORA_INFO_FILE recorded, or {}).
    A train.py run folder stands for its final LoRA, <run>/magicid_lora (said on stderr)."""
    final = os.path.join(path, "magicid_lora")
    if not os.path.isfile(os.path.join(path, LORA_FILE)) and os.path.isfile(os.path.join(final, LORA_FILE)):
        print(f"--lora {path} is a run folder: using its MagicID LoRA, {final}", file=sys.stderr)
        path = final
    check_lora_file(path)
    info_file = os.path.join(path, LORA_INFO_FILE)
    if not os.path.isfile(info_file):  # a LoRA from elsewhere, or from before LORA_INFO_FILE
        return path, {}
    try:
        with open(info_file, encoding="utf-8") as handle:
            return path, dict(json.load(handle))
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot read {info_file} ({error}): delete it and pass the LoRA's base model "
                             "with --model") from None


def check_lora_file(lora_dir: str) -> None:
    """Raise ModelLoadError naming the file unless `lora_dir` holds a whole LORA_FILE (its header is read)."""
    from safetensors import safe_open

    path = os.path.join(lora_dir, LORA_FILE)
    if not os.path.isfile(path):
        hint = (f" It looks like a run that has not finished: continue it with train.py --resume, or use "
                f"{os.path.join(lora_dir, 'identity_lora')}" if os.path.isdir(os.path.join(lora_dir, "identity_lora"))
                else "")
        raise ModelLoadError(f"no LoRA at {lora_dir!r}: expected the file {LORA_FILE} there "
                             f"(a folder written by train.py or save_lora).{hint}")
    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors' own error type: a cut or overwritten file
        raise ModelLoadError(f"{path} is not a readable LoRA file ({error}); it was probably cut short (a full "
                             "disk, an interrupted copy). Copy it again, or write it again: train.py --resume "
                             "--out <its run> saves it once more") from None


@contextlib.contextmanager
def _several_adapters_expected():
    """peft warns whenever a second adapter joins a model; holding several is this class's design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield
