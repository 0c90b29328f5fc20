"""On-demand views written in Python: the function's source is part of the
definition (stored in the registry, so a changed body is a new version, and
every process — engine, HTTP workers, gRPC servers, training sets — runs the
same code without importing the repo's files)."""
from __future__ import annotations

import functools
import inspect
import textwrap

import numpy as np
import pyarrow as pa

from fsapp.registry.errors import DefinitionError


def function_source(fn) -> str:
    """The source of `fn` without its decorators (what the registry stores)."""
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise DefinitionError(f"on-demand function {getattr(fn, '__name__', fn)!r}: its source is not "
                              f"available ({e}); define it in a .py file") from None
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def ")))
    return "\n".join(lines[start:]) + "\n"


@functools.lru_cache(maxsize=256)
def load_function(source: str, name: str):
    """The function `name` defined by `source`, run in a namespace of its own
    with numpy (np), pyarrow (pa) and pandas (pd, when installed)."""
    ns = {"__name__": "fstore_on_demand", "np": np, "numpy": np, "pa": pa}
    try:
        import pandas as pd
        ns["pd"] = ns["pandas"] = pd
    except ImportError:
        pass
    exec(compile(source, f"<on-demand function {name}>", "exec"), ns)  # noqa: S102 - the repo's own code
    fn = ns.get(name)
    if not callable(fn):
        raise DefinitionError(f"on-demand function source does not define {name}()")
    return fn
