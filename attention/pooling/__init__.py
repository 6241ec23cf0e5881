"""The pooling registry (set -> vector): `from attention.pooling import build_pooling, list_poolings`.

Adding a pooling: one file with a `@register_pooling("<name>")` class, one import line below.
"""
from .base import Pooling, PoolingSpec, build_pooling, list_poolings, register_pooling

from . import simple  # noqa: E402,F401
from . import swe  # noqa: E402,F401
from . import cswe  # noqa: E402,F401
from . import pma  # noqa: E402,F401

__all__ = ["Pooling", "PoolingSpec", "build_pooling", "list_poolings", "register_pooling"]
