"""The attention registry: every mechanism behind one interface (see `attention/base.py`).

    from attention import build_attention, list_attentions
    core = build_attention("esp", num_heads=4, head_dim=32, inv_temperature=10.0)
    out = core(q, k, v, key_padding_mask=pad)            # q, k, v: (B, H, N, D)

Adding a mechanism: write `attention/<name>.py` with a class decorated `@register_attention("<name>")`,
add one import line below, optionally `configs/attention/<name>.yaml`. The registry-parametrised tests
pick it up.
"""
from .base import AttentionCore
from .multihead import MultiHeadAttention, make_core
from .registry import AttentionSpec, build_attention, get_attention, list_attentions, register_attention

# One import per mechanism; importing registers it.
from . import softmax  # noqa: E402,F401
from . import sinkhorn  # noqa: E402,F401
from . import esp  # noqa: E402,F401
from . import lotformer  # noqa: E402,F401
from . import luna  # noqa: E402,F401
from . import linear  # noqa: E402,F401
from . import performer  # noqa: E402,F401

__all__ = ["AttentionCore", "AttentionSpec", "MultiHeadAttention", "build_attention", "get_attention",
           "list_attentions", "make_core", "register_attention"]
