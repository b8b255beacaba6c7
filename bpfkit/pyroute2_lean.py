"""pyroute2 without its package __init__, which imports the whole library.

`import pyroute2` (or any `from pyroute2.x import y`, which runs the package's __init__ first)
imports IPDB, NDB, conntrack, nl80211, plan9 and the rest: 98 of the 148 ms the lab's import takes
on this project's host, and most of the 6 s it takes in a TCG guest (2026-12-04). bpfkit uses a few
submodules. `use()` puts the package in sys.modules without running its __init__ (the real spec and
__path__, so submodules import as usual and only what they need): pyroute2's __init__ only imports
and lists names, it sets nothing up. A later `from pyroute2 import X` of a name that __init__
exports still works: the package's __getattr__ then runs the real __init__ once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def use() -> None:
    """Call before importing from pyroute2. Nothing happens if it is already imported."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the import that follows raises as usual
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # a submodule: import just it
            return importlib.import_module(f"pyroute2.{name}")
        del package.__dict__["__getattr__"]  # a name __init__ exports: run it, once
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules["pyroute2"] = package
