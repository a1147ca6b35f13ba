"""The stage scripts that are not importable by name, loaded by path for tests and benches."""

from __future__ import annotations

import functools
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def tokenize_cli():
    """tokenize/main.py as a module: its folder is not a package (it would shadow stdlib tokenize)."""
    spec = importlib.util.spec_from_file_location("tokenize_main", os.path.join(ROOT, "tokenize", "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
