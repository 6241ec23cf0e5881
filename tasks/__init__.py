"""The task registry: one module per benchmark family (data, model assembly, loss, metrics).

Adding a task: a module with a `@register_task("<name>")` subclass of `tasks.base.Task`, one import
line below, `configs/task/<name>.yaml`, and a test fixture that writes its real on-disk format.
Heavy third-party imports (torch_geometric, sentencepiece, esm) belong inside functions, so that
`train.py --help` and config errors stay fast.
"""
from lab.registry import Registry

TASKS = Registry("task")
register_task = TASKS.register


def build_task(name: str, /, **kwargs):
    return TASKS.build(TASKS.canonical(name), **kwargs)


def list_tasks(pattern: str = "*") -> list[str]:
    return TASKS.names(pattern)


from . import cifar  # noqa: E402,F401
from . import modelnet  # noqa: E402,F401
from . import protein  # noqa: E402,F401
from . import imagenet  # noqa: E402,F401
from . import iwslt14  # noqa: E402,F401
from . import imdb  # noqa: E402,F401
from . import lra  # noqa: E402,F401
