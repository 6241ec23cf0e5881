"""Shared pieces of every classification task: cross-entropy, accuracy, mean class accuracy,
macro-F1, top-k accuracy (for tasks that list `top_k`) and a confusion-matrix figure."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from backbones import build_backbone

from .base import Evaluation, ModelSpec, Task


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value for key, value in batch.items() if key != "labels"}


class ClassificationTask(Task):
    monitor = "accuracy"
    class_names: Sequence[str] = ()
    top_k: tuple[int, ...] = ()  # also report `top{k}` accuracy (e.g. ImageNet's top-5)

    @classmethod
    def reported_metrics(cls) -> tuple[str, ...]:
        return ("accuracy", *(f"top{k}" for k in cls.top_k), "mean_class_accuracy", "macro_f1")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def backbone_inputs(self) -> dict:
        """Data-dependent constructor arguments of the backbone (image size, channels, vocab ...)."""
        return {}

    def build_model(self, model: ModelSpec, attention: AttentionSpec, pooling: PoolingSpec) -> nn.Module:
        return build_backbone(model.name, num_classes=self.num_classes, attention=attention, pooling=pooling,
                              **self.backbone_inputs(), **model.options)

    def transform(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        """Batch preprocessing on the device: augmentation when `generator` is given (training), then
        normalisation. Identity by default."""
        return batch

    def training_loss(self, model, batch, generator):
        batch = self.transform(batch, generator)
        return F.cross_entropy(model(**model_inputs(batch)), batch["labels"])

    @torch.no_grad()
    def eval_step(self, model, batch):
        batch = self.transform(batch, None)
        logits = model(**model_inputs(batch)).float()
        outputs = {"predictions": logits.argmax(-1), "labels": batch["labels"],
                   "loss": F.cross_entropy(logits, batch["labels"], reduction="none")}
        for k in self.top_k:
            top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # (B, k)
            outputs[f"top{k}"] = (top == batch["labels"][:, None]).any(-1)
        return outputs

    def metrics(self, outputs, split):
        confusion = confusion_matrix(outputs["predictions"], outputs["labels"], self.num_classes)
        draw = partial(plot_confusion_matrix, confusion, self.class_names, split)
        top_k = {f"top{k}": outputs[f"top{k}"].float().mean().item() for k in self.top_k}
        return Evaluation(metrics={**classification_metrics(confusion), **top_k, "loss": outputs["loss"].mean().item()},
                          figures={"confusion_matrix": draw})


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts, rows = true class, columns = predicted class."""
    flat = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(confusion: Tensor) -> dict[str, float]:
    confusion = confusion.double()
    true_per_class = confusion.sum(1)
    predicted_per_class = confusion.sum(0)
    correct = confusion.diagonal()
    present = true_per_class > 0
    recall = correct / true_per_class.clamp_min(1)
    precision = correct / predicted_per_class.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {
        "accuracy": (correct.sum() / confusion.sum().clamp_min(1)).item(),
        "mean_class_accuracy": recall[present].mean().item(),
        "macro_f1": f1[present].mean().item(),
    }


def plot_confusion_matrix(confusion: Tensor, class_names: Sequence[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = confusion.shape[0]
    normalised = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    size = min(4 + 0.25 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title}, row-normalised)")
    if n <= 40:
        names = list(class_names) or [str(i) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
