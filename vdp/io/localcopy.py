"""A local copy of a small remote file or folder (a tokenizer) for libraries that open only local paths.

SentencePiece and transformers load a tokenizer from a path on disk, so a `--tokenizer` given as
s3:// or oss:// is copied once per machine into the temp folder. The copy's folder is named after
the URL and the objects' sizes, so every worker process and every Ray task on that machine finds
and reuses it, and a tokenizer replaced under the same URL by files of other sizes gets a new
copy (sizes cost one request per file; contents would cost the download). The copy appears by
one rename of a finished folder, so a process never sees half of one. Local paths pass through.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile

from vdp.io import storage

CACHE = os.path.join(tempfile.gettempdir(), "vdp-remote-copies")


@functools.lru_cache(maxsize=8)
def local_copy(path: str) -> str:
    """`path` itself when local; else the local path of a copy of the remote file or folder.

    Raises FileNotFoundError when nothing is at a remote `path`.
    """
    if not storage.is_remote(path):
        return path
    path = path.rstrip("/")
    objects = _remote_objects(path)
    folder = os.path.join(CACHE, _digest(path, objects))
    if not os.path.isdir(folder):
        _download(storage.dirname(path), objects, folder)
    return os.path.join(folder, storage.basename(path))


def _remote_objects(path: str) -> dict[str, int]:
    """Relative name (under the copy's folder) -> size of every object to copy."""
    found = storage.stat(path)
    if found is None:
        raise FileNotFoundError(f"nothing at {path}")
    name = storage.basename(path)
    if found[0] == "file":
        return {name: found[1]}
    return {name + "/" + url[len(path) + 1 :]: storage.size(url) for url in storage.list_files(path)}


def _digest(path: str, objects: dict[str, int]) -> str:
    text = path + "\n" + "\n".join(f"{rel} {size}" for rel, size in sorted(objects.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _download(parent: str, objects: dict[str, int], folder: str) -> None:
    """Fill a private temp folder, then rename it into place; another process may have won the race."""
    os.makedirs(CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=CACHE, prefix=".partial-")
    try:
        for rel in objects:
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(storage.read_bytes(parent + "/" + rel))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
