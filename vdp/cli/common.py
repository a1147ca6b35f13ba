"""Flags every command shares, declared once so they mean the same everywhere."""

from __future__ import annotations

import argparse
import os


def add_run_flags(p: argparse.ArgumentParser, unit: str) -> None:
    """--workers, --s3_endpoint and --no_progress, with one default and one meaning each."""
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help=f"worker processes, one {unit} at a time each (default: all cores)")
    p.add_argument("--s3_endpoint", default=None,
                   help="S3-compatible endpoint URL (TOS, MinIO, Ceph); else the AWS config decides")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (the summary is still printed)")
