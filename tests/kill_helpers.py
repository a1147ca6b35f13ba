"""Running a stage's command as a real process, killing it outright, and reading what it left: for the
crash and full-disk tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from vdp.io.storage import TEMP_NAME as TEMP  # the name of a local write's temp file
from vdp.run.accounting import is_accounting  # stats and summaries carry times: not compared here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(script: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, script), *args]


def run(cmd: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def temp_files(*folders: str) -> list[str]:
    """Every temp file of a local write anywhere under `folders` (hidden folders included)."""
    found = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            found += [os.path.join(root, f) for f in files if TEMP.match(f)]
    return sorted(found)


def files_under(folder: str, comparable: Callable[[str, bytes], bytes] | None = None) -> dict[str, bytes]:
    """Relative name -> bytes of every file under `folder` (hidden ones too), temp files and
    accounting files aside; `comparable(rel, data)` may give a file's comparable form instead
    (without its timings)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in (n for n in files if not TEMP.match(n) and not is_accounting(n)):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            rel = os.path.relpath(path, folder)
            out[rel] = comparable(rel, data) if comparable else data
    return out


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int, seconds: float = 15) -> None:
    """Until every process of the group is gone: a killed run's workers must die with it."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _group_members(pgid):
            return
        time.sleep(0.02)
    raise AssertionError(f"processes {_group_members(pgid)} outlived their killed run")


def run_killed(cmd: list[str], env: dict | None, trigger: Callable[[], bool], seconds: float = 60) -> bool:
    """Start `cmd` in a process group of its own and SIGKILL its main process as soon as
    `trigger()` is true (polled every few ms), as the OOM killer would; wait until its workers
    are gone too. Returns whether the kill landed before the command ended by itself."""
    out = subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
    deadline = time.time() + seconds
    try:
        while proc.poll() is None and not trigger():
            if time.time() > deadline:
                raise AssertionError(f"{cmd} neither ended nor met its kill trigger in {seconds}s")
            time.sleep(0.003)
        landed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_group_gone(proc.pid)
    return landed


def after(seconds: float) -> Callable[[], bool]:
    start = time.time()
    return lambda: time.time() - start >= seconds
