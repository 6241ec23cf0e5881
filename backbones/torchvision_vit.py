"""torchvision's `VisionTransformer` as our ViT, tensor for tensor, with any attention mechanism.

    from backbones import convert_torchvision_vit
    model = convert_torchvision_vit(torchvision.models.vit_b_16(weights="IMAGENET1K_V1"), attention="luna")
    logits = model(images)                     # images: (B, 3, 224, 224), normalised as the weights expect

With `attention="softmax"` the result computes torchvision's logits (to float rounding); with another
mechanism it keeps every tensor and adds the mechanism's own parameters, to be fine-tuned (LUNA's post-hoc
conversion, arXiv 2512.08061). `init=torchvision:vit_b_16` does the same inside `train.py`.

Name map, torchvision -> ours (i = layer; `in_proj` packs [q; k; v] along its first axis):
    conv_proj -> patch_embed              class_token -> cls_token          encoder.pos_embedding -> pos_embed
    encoder.layers.encoder_layer_i.{ln_1, ln_2, mlp.0, mlp.3} -> encoder.blocks.i.{norm_attn, norm_ffn, ffn.0, ffn.3}
    ...self_attention.in_proj_{weight,bias} -> attn.to_q ([q]) and attn.to_kv ([k; v])
    ...self_attention.out_proj -> attn.to_out          encoder.ln -> encoder.norm          heads.head -> head
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from attention import AttentionSpec
from attention.pooling import PoolingSpec
from lab.download import DataError, file_digest
from lab.registry import ConfigError, closest_first

from .pretrained import InitReport, load_weights
from .vit import ViT

log = logging.getLogger(__name__)

TORCHVISION_VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


def vit_options(tv_model: nn.Module) -> dict[str, Any]:
    """Our ViT's constructor options that reproduce `tv_model`'s architecture."""
    if not isinstance(tv_model.conv_proj, nn.Conv2d):
        raise ConfigError("torchvision ViTs with a convolutional stem (conv_stem_configs) are not supported")
    if tv_model.representation_size is not None:
        raise ConfigError("torchvision ViTs with a representation layer (heads.pre_logits) are not supported")
    if tv_model.attention_dropout:
        raise ConfigError(f"the torchvision ViT uses attention dropout {tv_model.attention_dropout}; "
                          "the attention cores here have none")
    layers = list(tv_model.encoder.layers)
    return {"num_classes": tv_model.num_classes, "image_size": tv_model.image_size, "in_channels": 3,
            "patch_size": tv_model.patch_size, "dim": tv_model.hidden_dim, "depth": len(layers),
            "num_heads": layers[0].num_heads, "mlp_ratio": tv_model.mlp_dim / tv_model.hidden_dim,
            "dropout": tv_model.dropout, "qkv_bias": True, "norm_eps": tv_model.encoder.ln.eps}


def torchvision_vit_state(tv_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ViT state dict renamed (and in_proj split) into our ViT's names."""
    renames = {"conv_proj.": "patch_embed.", "class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
               "encoder.ln.": "encoder.norm.", "heads.head.": "head."}
    block_parts = {"ln_1.": "norm_attn.", "ln_2.": "norm_ffn.", "mlp.0.": "ffn.0.", "mlp.3.": "ffn.3.",
                   "self_attention.out_proj.": "attn.to_out."}
    layer_prefix = "encoder.layers.encoder_layer_"
    state: dict[str, Tensor] = {}
    for key, value in tv_state.items():
        if key.startswith(layer_prefix):
            index, rest = key[len(layer_prefix):].split(".", 1)
            block = f"encoder.blocks.{index}."
            if rest.startswith("self_attention.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                q, kv = value.split([value.shape[0] // 3, 2 * value.shape[0] // 3])  # [q] and [k; v]
                state[f"{block}attn.to_q.{kind}"], state[f"{block}attn.to_kv.{kind}"] = q, kv
                continue
            part = next((p for p in block_parts if rest.startswith(p)), None)
            if part is None:
                raise ConfigError(f"unexpected tensor '{key}' in the torchvision ViT")
            state[block + block_parts[part] + rest[len(part):]] = value
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is None:
            raise ConfigError(f"unexpected tensor '{key}' in the torchvision ViT")
        state[renames[prefix] + key[len(prefix):]] = value
    return state


def convert_torchvision_vit(tv_model: nn.Module, attention: str = "softmax", **attention_options: Any) -> ViT:
    """Our ViT with `tv_model`'s weights and the attention `attention` (a registry name) with its options;
    `forward(images) -> logits`. Parameters the mechanism adds are initialised by its constructor (logged)."""
    model = ViT(attention=AttentionSpec(attention, attention_options), pooling=PoolingSpec("cls"),
                **vit_options(tv_model))
    report = load_weights(model, torchvision_vit_state(tv_model.state_dict()), type(tv_model).__name__)
    log.info(report.summary())
    return model.train(tv_model.training)


def resolve_weights(spec: str):
    """`vit_b_16` (its DEFAULT weights) or `vit_b_16.IMAGENET1K_SWAG_E2E_V1` -> (model name, weights enum)."""
    from torchvision.models import get_model_weights

    name, _, tag = spec.partition(".")
    if name not in TORCHVISION_VITS:
        raise ConfigError(f"init=torchvision:{spec}: unknown torchvision ViT '{name}'; valid choices: "
                          + ", ".join(closest_first(name, TORCHVISION_VITS)))
    weights_enum = get_model_weights(name)
    if not tag:
        return name, weights_enum.DEFAULT
    try:
        return name, weights_enum[tag]
    except KeyError:
        raise ConfigError(f"init=torchvision:{spec}: no weights '{tag}' for {name}; valid choices: "
                          + ", ".join(closest_first(tag, [w.name for w in weights_enum]))) from None


def cached_weights_file(weights) -> Path:
    """Where torchvision keeps the downloaded file of `weights` (torch hub's checkpoint cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def preprocessing_of(weights) -> dict[str, Any]:
    """The eval pipeline the weights were trained for: resize, center crop, normalisation."""
    transform = weights.transforms()
    return {"resize_size": transform.resize_size[0], "crop_size": transform.crop_size[0],
            "interpolation": transform.interpolation.value, "mean": list(transform.mean),
            "std": list(transform.std)}


def load_torchvision_weights(model: nn.Module, spec: str) -> InitReport:
    """`init=torchvision:<spec>`: torchvision downloads the weights once (on the user's machine), then they
    are mapped onto `model`, which must be our ViT built with the same architecture."""
    from torchvision.models import get_model

    name, weights = resolve_weights(spec)
    source = f"torchvision:{name}.{weights.name}"
    if not isinstance(model, ViT):
        raise ConfigError(f"init={source} needs model=vit (got {type(model).__name__})")
    try:
        tv_model = get_model(name, weights=weights)
    except OSError as error:  # URLError included: no network, proxy, disk
        raise DataError(f"could not download {source} from {weights.url} ({getattr(error, 'reason', error)}); "
                        f"put the file at {cached_weights_file(weights)}") from None
    if model.cls_token is None:
        raise ConfigError(f"init={source} needs the CLS token: pooling=cls (the ViT's default)")
    expected = vit_options(tv_model)
    built = {"norm_eps": model.encoder.norm.eps, "qkv_bias": model.encoder.blocks[0].attn.to_q.bias is not None}
    for option, value in built.items():
        if value != expected[option]:
            raise ConfigError(f"init={source} needs model.{option}={expected[option]} (the model has {value}); "
                              f"experiment=imagenet_vit_b16 and imagenet_vit_s16 set it")
    report = load_weights(model, torchvision_vit_state(tv_model.state_dict()), source)
    weights_file = cached_weights_file(weights)
    report.sha256 = file_digest(weights_file, "sha256") if weights_file.exists() else None
    report.preprocessing = preprocessing_of(weights)
    return report
