"""Start a model from trained weights, possibly with another attention: the `init=` config key.

    init=torchvision:vit_b_16          torchvision's ImageNet weights (`:NAME.WEIGHTS` picks other ones)
    init=runs/<run>/<time>/best.pt     one of our checkpoints, trained with any attention mechanism

Post-hoc conversion as in LUNA (arXiv 2512.08061, §5: a fine-tuned ViT-B/16 keeps its Q/K/V/O projections,
softmax is replaced, the model is fine-tuned briefly) and LOTFormer's two-stage recipe (arXiv 2509.23436).
Every tensor outside the attention cores (patch embedding, CLS token, positions, Q/K/V/O, norms, MLPs, head)
must exist in the source under the same name with the same shape, or loading stops with one line naming
it. Inside the cores, tensors the source lacks (LOTFormer's pivots, LUNA's feature map) keep the values
their constructor gave them and are reported as new; the source's own core tensors that the model's
mechanism does not have are reported as dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attention import AttentionCore
from lab.checkpoint import load_checkpoint
from lab.download import file_digest
from lab.registry import ConfigError

TORCHVISION_PREFIX = "torchvision:"


@dataclass
class InitReport:
    """What `init` loaded into the model, for the log line and the run's tags."""

    source: str
    loaded: list[str]
    new: list[str]  # model tensors inside attention cores that the source lacks (kept as constructed)
    dropped: list[str]  # source tensors inside attention cores that the model lacks
    sha256: str | None = None  # of the file the weights were read from
    preprocessing: dict[str, Any] | None = None  # the image pipeline the weights expect (torchvision weights)

    def summary(self) -> str:
        line = f"init {self.source}: {len(self.loaded)} tensors loaded"
        line += f"; new, as constructed: {compact(self.new)}" if self.new else "; no new tensors"
        if self.dropped:
            line += f"; dropped (the source's mechanism): {compact(self.dropped)}"
        return line

    def tags(self) -> dict[str, str]:
        tags = {"init": self.source, "init_new_tensors": compact(self.new) or "none"}
        if self.sha256:
            tags["init_sha256"] = self.sha256
        return tags


def compact(names: list[str]) -> str:
    """Tensor names in one short line: layer indices become `*` with a count, and siblings share their parent:
    `encoder.blocks.*.attn.core.{pivots, mass_logits} (×12)`."""
    counts: dict[str, int] = {}
    for name in names:
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        counts[pattern] = counts.get(pattern, 0) + 1
    siblings: dict[tuple[str, int], list[str]] = {}
    for pattern, count in counts.items():
        parent, _, leaf = pattern.rpartition(".")
        siblings.setdefault((parent, count), []).append(leaf)
    parts = []
    for (parent, count), leaves in siblings.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        name = f"{parent}.{leaf}" if parent else leaf
        parts.append(f"{name} (×{count})" if count > 1 else name)
    return ", ".join(parts)


def attention_core_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, AttentionCore))


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> InitReport:
    """Copy `state` into `model` under the rule above; ConfigError (one line) on any other difference."""
    target = model.state_dict()
    in_core = attention_core_prefixes(model)
    dropped = [key for key in state if key not in target and key.startswith(in_core)]
    new = [key for key in target if key not in state and key.startswith(in_core)]
    for key in state:
        if key not in target and key not in dropped:
            raise ConfigError(f"init {source}: its tensor '{key}' has no counterpart in the model "
                              "(build the model as the source was built: same backbone and model.* options)")
    for key in target:
        if key not in state and key not in new:
            raise ConfigError(f"init {source}: it has no tensor '{key}' (build the model as the source was "
                              "built: same backbone and model.* options)")
        if key in state and state[key].shape != target[key].shape:
            raise ConfigError(f"init {source}: tensor '{key}' has shape {tuple(state[key].shape)}, the model's "
                              f"{tuple(target[key].shape)}")
    loaded = [key for key in target if key in state]
    model.load_state_dict({key: state[key] for key in loaded}, strict=False)
    return InitReport(source, loaded, new, dropped)


def load_initial_weights(model: nn.Module, init: str) -> InitReport:
    """Resolve the `init` config value and load it into `model`."""
    if init.startswith(TORCHVISION_PREFIX):
        from .torchvision_vit import load_torchvision_weights

        return load_torchvision_weights(model, init[len(TORCHVISION_PREFIX):])
    path = Path(init).expanduser()
    if not path.is_file():
        raise ConfigError(f"init checkpoint {path} does not exist (init= takes a checkpoint path, e.g. "
                          "runs/<run>/<time>/best.pt, or torchvision:<vit name>)")
    report = load_weights(model, load_checkpoint(path)["model"], str(path))  # load_checkpoint: ours or ConfigError
    report.sha256 = file_digest(path, "sha256")
    return report
