"""The flags every command shares mean the same in all four (issue: --no_progress was missing in index)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["pack.py", "tokenize/main.py", "index/main.py", "index/check_pair.py", "index/dedup.py"]


def help_text(command: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, command), "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_shared_flags_are_declared_once_with_one_default(command):
    text = help_text(command)
    assert "--workers WORKERS" in text and "(default: all cores)" in text
    assert "--s3_endpoint S3_ENDPOINT S3-compatible endpoint URL" in text
    assert "--no_progress no progress bar" in text
