"""The package installs as users install it: `pip install .` pulls no torch, Ray, Energon, moto or
selenium, and gives the five vdp-* commands with the same flags as the repo's scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = {"torch", "ray", "megatron-energon", "moto", "selenium", "pytest", "decord", "s3fs", "oss2", "faiss-cpu"}


def test_base_install_pulls_nothing_heavy(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "bench_out", "demo_out", "__pycache__"))
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--disable-pip-version-check", "--report", str(report), str(src)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"av", "webdataset", "sentencepiece", "video-data-pipeline"} <= names
    assert not names & HEAVY, names & HEAVY


@pytest.mark.parametrize("command, script", [("vdp-pack", "pack.py"), ("vdp-tokenize", "tokenize/main.py"),
                                             ("vdp-index", "index/main.py"), ("vdp-check-pair", "index/check_pair.py"),
                                             ("vdp-dedup", "index/dedup.py")])
def test_console_scripts_take_the_scripts_flags(command, script):
    exe = os.path.join(os.path.dirname(sys.executable), command)
    assert os.path.exists(exe), f"{command} not installed beside {sys.executable}"
    installed = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "COLUMNS": "200"})
    shim = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert installed.returncode == shim.returncode == 0, installed.stderr + shim.stderr
    flags = lambda text: sorted(w for w in text.split() if w.startswith("--"))  # noqa: E731
    assert flags(installed.stdout) == flags(shim.stdout)


def test_a_plugin_adds_a_dataset_and_a_sampler(tmp_path):
    """Your own loader and sampler, in a file given to --plugin, show up as choices."""
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "from vdp.pack.manifest import loader, make_record\n"
        "from vdp.pack.samplers import register\n"
        "@loader('mycsv', rows='csv')\n"
        "def load(row, where, options):\n"
        "    return make_record(where, row.get('file'), row.get('text'))\n"
        "register('fl', lambda frames, opts: [0, len(frames) - 1], lambda c, n, o: '<image>' * len(c), needs_types=False)\n"
    )
    exe = os.path.join(os.path.dirname(sys.executable), "vdp-pack")
    out = subprocess.run([exe, "--plugin", str(plugin), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    assert "mycsv" in out.stdout and "fl" in out.stdout.split("--type")[1].split("}")[0]
