"""Your own datasets and samplers: Python files imported by path, in the parent and in Ray workers.

A plugin registers into the package's registries (`vdp.pack.manifest.loader`,
`vdp.pack.samplers.register`); the package itself never imports the repo's loaders.py or
samplers.py, the commands import them when named by --plugin (the repo's shims do that).
"""

from __future__ import annotations

import importlib.util
import os
import sys


def import_plugin(path: str) -> None:
    """Import a Python file by path, once, as a module named after it (a Ray worker does it again)."""
    name = os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(name)
    if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == os.path.abspath(path):
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"--plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
