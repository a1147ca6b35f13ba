"""Flags every command shares, declared once so they mean the same everywhere."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

from vdp.errors import EXIT_OUTPUT, EXIT_USAGE, UsageError
from vdp.io.storage import OutputError
from vdp.plugins import import_plugin


def add_run_flags(p: argparse.ArgumentParser, unit: str) -> None:
    """--workers, --s3_endpoint and --no_progress, with one default and one meaning each."""
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help=f"worker processes, one {unit} at a time each (default: all cores)")
    p.add_argument("--s3_endpoint", default=None,
                   help="S3-compatible endpoint URL (TOS, MinIO, Ceph); else the AWS config decides")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (the summary is still printed)")


def add_executor_flags(p: argparse.ArgumentParser, task: str) -> None:
    """--executor and --ray_address: where the runner sends its units, one `task` each."""
    p.add_argument("--executor", default="pool", choices=["pool", "ray"],
                   help=f"pool: worker processes on this machine; ray: one Ray task per {task} (local or --ray_address)")
    p.add_argument("--ray_address", default=None,
                   help="Ray cluster to join, e.g. auto or HEAD:6379 (default: start a local Ray)")


def add_plugin_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help=f"a Python file registering your own {what} (repeatable); the repo's shims pass "
                        "its loaders.py and samplers.py")


def load_plugins(argv: Sequence[str] | None) -> list[str]:
    """Import the files named by --plugin before the flags are built (their names become choices)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    for path in known.plugin:
        import_plugin(path)
    return [os.path.abspath(p) for p in known.plugin]


def reports_command_errors(prog: str) -> Callable:
    """Decorate a command's main: the one place expected failures become one line and an exit status.

    A UsageError (a bad flag, an unusable top-level input, flags that differ from the run being
    resumed) ends the command with `PROG: error: …` and EXIT_USAGE before any work is done. An
    output that cannot be written mid-run (disk full, a folder made read-only) ends it with one
    line naming that output and EXIT_OUTPUT, not a traceback.

    Nothing incomplete is left under a final name (writes are atomic), and what the run left
    behind is removed by the rerun, so freeing space and running the same command again is all
    it takes.
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UsageError as e:
                print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
                return EXIT_USAGE
            except OutputError as e:
                print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
                return EXIT_OUTPUT

        return run

    return decorate
