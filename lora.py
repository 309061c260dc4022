"""lora.py — LoRA adapters on the video transformer: one trainable, any number frozen, switched without copies.

A LoRA replaces a linear layer's W by W + (α/r)·B·A (A: [r, in], B: [out, r], B = 0 at the start, so a
fresh adapter changes nothing). MagicID needs three at once on one network: the trainable policy
("default"), the frozen DPO reference (the identity-stage LoRA: "reference"), and none at all (the base
model, for the repository's initial videos). peft holds them side by side; `adapter(name)` runs the
network with exactly one of them active, which is how DPO gets its reference without a second copy
of the weights. Files are diffusers' LoRA format (pytorch_lora_weights.safetensors), which a stock
pipeline's load_lora_weights reads.

Exports: LoraAdapters (VideoModel's adapter half), LORA_TARGETS, LORA_FILE, ModelLoadError.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
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
    """The adapter methods of model.VideoModel; they use its `transformer`, `pipe` and `name`."""

    def _init_adapters(self) -> None:
        self._trainable_adapters: set[str] = set()
        self._tuner_layers: list = []  # peft's LoRA layers, found when an adapter is added
        self._lora_params: list = []   # (name, parameter) of every adapter

    def add_lora(self, rank: int, targets: str = "attention", name: str = "default", trainable: bool = True,
                 alpha: float | None = None, seed: int = 0) -> None:
        """Attach a fresh LoRA (B = 0, so the output is unchanged) to the layers of LORA_TARGETS[targets].

        A is drawn (peft: Kaiming-uniform) from `seed` on a forked RNG: the same seed gives the same LoRA
        whatever ran before, and the caller's random stream does not move.
        """
        from peft import LoraConfig

        config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(LORA_TARGETS[targets]),
                            init_lora_weights=True)
        device = self.transformer.device  # peft draws A where the layer lives: that device's generator
        with _several_adapters_expected(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            self.transformer.add_adapter(config, adapter_name=name)
        self._register_adapter(name, trainable)

    def load_lora(self, lora_dir: str, name: str = "default", trainable: bool = False) -> None:
        """Load a LoRA saved by `save_lora` (or any diffusers LoRA for this backbone) as adapter `name`."""
        path = os.path.join(lora_dir, LORA_FILE)
        if not os.path.isfile(path):
            raise ModelLoadError(f"no LoRA at {lora_dir!r}: expected the file {LORA_FILE} there "
                                 "(a folder written by train.py or save_lora).")
        try:
            with _several_adapters_expected():
                self.pipe.load_lora_weights(lora_dir, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(f"the LoRA in {lora_dir!r} does not fit model {self.name!r}: {error}") from error
        self._register_adapter(name, trainable)

    def save_lora(self, lora_dir: str, name: str = "default") -> None:
        """Write adapter `name` in the diffusers format that a stock pipeline's load_lora_weights reads."""
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.transformer, adapter_name=name)
        state = {key: value.detach().float().cpu().contiguous() for key, value in state.items()}
        metadata = self.transformer.peft_config[name].to_dict()
        type(self.pipe).save_lora_weights(lora_dir, transformer_lora_layers=state,
                                          transformer_lora_adapter_metadata=metadata, safe_serialization=True)

    def lora_parameters(self, name: str = "default") -> list[torch.nn.Parameter]:
        """The parameters of adapter `name`, in a fixed order (optimizers and checkpoints rely on it)."""
        tag = f".{name}."
        return [p for key, p in self.transformer.named_parameters() if "lora_" in key and tag in key]

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
        self._tuner_layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        self._lora_params = [(key, p) for key, p in self.transformer.named_parameters() if "lora_" in key]
        self._activate(name)

    def _active_adapters(self):
        if not self._tuner_layers or self._tuner_layers[0].disable_adapters:
            return None
        return self._tuner_layers[0].active_adapters[0]

    def _activate(self, name: str | None) -> None:
        for module in self._tuner_layers:
            if name is None:
                module.enable_adapters(False)
            else:
                module.enable_adapters(True)
                module.set_adapter(name)
        # peft ties requires_grad to "active"; we tie it to "trainable" instead, so switching to the
        # reference adapter for a no-grad forward does not silently change what the optimizer trains.
        for key, p in self._lora_params:
            p.requires_grad_(any(f".{n}." in key for n in self._trainable_adapters))


@contextlib.contextmanager
def _several_adapters_expected():
    """peft warns whenever a second adapter joins a model; holding several is this class's design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield
