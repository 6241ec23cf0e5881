"""Backbones: Transformer models that take their attention (and pooling) by name.

    from backbones import build_backbone
    model = build_backbone("vit", num_classes=10, image_size=32, in_channels=3,
                           attention=AttentionSpec("esp"), pooling=PoolingSpec("mean"), dim=192)

Parameters without defaults (num_classes, data shapes, attention, pooling) are supplied by the task;
parameters with defaults are the `model.*` config options. Adding a backbone: one file with a
`@register_backbone("<name>")` class, one import line below.

Trained weights: `convert_torchvision_vit(tv_model, attention="luna")` turns torchvision's ViT into ours with
any attention (`torchvision_vit.py`); the `init=` config key loads torchvision's or our checkpoints
(`pretrained.py`).
"""
from lab.registry import Registry

BACKBONES = Registry("backbone")
register_backbone = BACKBONES.register


def build_backbone(name: str, /, **kwargs):
    return BACKBONES.build(BACKBONES.canonical(name), **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


from . import vit  # noqa: E402,F401
from . import point_transformer  # noqa: E402,F401
from . import set_transformer  # noqa: E402,F401
from . import sequence_encoder  # noqa: E402,F401
from . import set_pooler  # noqa: E402,F401
from . import seq2seq  # noqa: E402,F401
from . import dual_encoder  # noqa: E402,F401

from .torchvision_vit import convert_torchvision_vit  # noqa: E402

__all__ = ["BACKBONES", "build_backbone", "convert_torchvision_vit", "list_backbones", "register_backbone"]
