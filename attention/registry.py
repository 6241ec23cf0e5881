"""The attention registry: `@register_attention(name)`, `build_attention`, `list_attentions`.

A mechanism is a subclass of `attention.base.AttentionCore` registered under a name. Its
constructor takes `num_heads` and `head_dim` (supplied by the multi-head wrapper) and keyword
options with defaults (settable from `configs/attention/<name>.yaml` and the command line).
"""
from __future__ import annotations

from lab.registry import ConfigError, Registry
from lab.registry import Spec as AttentionSpec  # which mechanism and its options: what configs hand to backbones

ATTENTIONS = Registry("attention")
register_attention = ATTENTIONS.register


def list_attentions(pattern: str = "*") -> list[str]:
    """Registered mechanism names (glob `pattern`), sorted."""
    return ATTENTIONS.names(pattern)


def get_attention(name: str):
    """The class registered under `name` (ConfigError naming the choices if unknown)."""
    return ATTENTIONS.get(name)


def _require(capability: str, name: str) -> None:
    cls = ATTENTIONS.get(name)
    if getattr(cls, capability):
        return
    able = [n for n in ATTENTIONS.names() if getattr(ATTENTIONS.get(n), capability)]
    what = {"supports_causal": "causal (decoder) attention", "supports_cross": "cross-attention"}[capability]
    raise ConfigError(f"attention '{name}' does not support {what}; mechanisms that do: {', '.join(able)}")


def build_attention(name: str, *, num_heads: int, head_dim: int, causal: bool = False,
                    cross: bool = False, **options):
    """Build the core `name` for `num_heads` heads of size `head_dim`.

    `causal=True` / `cross=True` state what the caller will use it for; a mechanism that cannot do
    it is refused here, at construction, with the names of those that can.
    """
    if causal:
        _require("supports_causal", name)
    if cross:
        _require("supports_cross", name)
    return ATTENTIONS.build(name, num_heads=num_heads, head_dim=head_dim, **options)
