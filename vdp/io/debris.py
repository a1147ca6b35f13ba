"""What killed runs leave behind, removed by the next run before it writes.

Every output is written atomically (vdp.io.storage): locally through a hidden temp file
`.{name}.tmp-{pid}` renamed when complete, remotely through a multipart upload completed at the
end. A run killed outright (SIGKILL, the OOM killer, a lost node) can do neither its rename
nor its abort: the temp file stays in the output folder, the upload stays in the bucket
(billed, and invisible to listings). Each stage therefore calls `remove_stale_partials` with
the final paths it is about to write, before it writes any of them.

Only those paths are looked at, never a folder as a whole: several machines may write into one
shared folder at once, and their files are theirs. Within them:
- a local temp file is removed only when no live process writes it: a writer holds an
  exclusive flock on its temp file for as long as it writes, and a killed writer's lock goes
  with it (the lock also holds across hosts on NFS);
- an unfinished upload is aborted only for an `owned` path (one no other machine writes);
  a `shared` path (a file every machine rewrites, such as stage 2's errors.jsonl) may be
  uploading from another machine right now, and it is small enough to go up in one PUT,
  which leaves nothing behind when killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections import defaultdict
from collections.abc import Iterable

from vdp.io import storage


def remove_stale_partials(owned: Iterable[str], shared: Iterable[str] = ()) -> int:
    """Remove what killed writes of these final paths left; returns how many were removed.

    `owned`: paths only this run writes (its tars, their sidecars, its errors and flags files).
    `shared`: paths other machines write as well.
    """
    owned, shared = list(owned), list(shared)
    local_owned = {os.path.abspath(p) for p in owned if not storage.is_remote(p)}
    local_shared = {os.path.abspath(p) for p in shared if not storage.is_remote(p)}
    removed = _remove_temp_files(local_owned, local_shared)
    return removed + _abort_uploads({p for p in owned if storage.is_remote(p)})


# --- local temp files ---------------------------------------------------------------------------


def _remove_temp_files(owned: set[str], shared: set[str]) -> int:
    by_folder: dict[str, set[str]] = defaultdict(set)
    for path in owned | shared:
        by_folder[os.path.dirname(path)].add(os.path.basename(path))
    removed = 0
    for folder, names in by_folder.items():
        for temp, name in _temp_files(folder, names):
            removed += _remove_if_stale(temp, may_guess=os.path.join(folder, name) in owned)
    return removed


def _temp_files(folder: str, names: set[str]) -> list[tuple[str, str]]:
    """(temp file, its final name) in `folder` for a write of one of `names`: one listing of the folder."""
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(e, m["name"]) for e in entries if (m := storage.TEMP_NAME.match(e))]
    return [(os.path.join(folder, e), name) for e, name in found if name in names]


def _remove_if_stale(temp: str, may_guess: bool) -> bool:
    """Remove `temp` if its writer is gone; where locks do not work, only if `may_guess`."""
    try:
        fd = os.open(temp, os.O_RDWR)  # NFS emulates flock with write locks: they need a writable fd
    except OSError:  # gone meanwhile, or a read-only folder where it cannot be removed anyway
        return False
    try:
        writer = _writer(fd)
        if writer == "alive" or (writer == "unknown" and not may_guess):
            return False
        held, there = os.fstat(fd), os.stat(temp)
        if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
            return False  # a new writer's file took the name meanwhile
        os.unlink(temp)
        return True
    except OSError:  # gone meanwhile, or not ours to remove (another user's, in a sticky folder)
        return False
    finally:
        os.close(fd)  # releases our lock, if we took it


def _writer(fd: int) -> str:
    """"alive" while a process holds the writer's lock, "gone" when we could take it, else "unknown"."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "alive"
    except OSError:  # no locks on this filesystem
        return "unknown"
    return "gone"


# --- unfinished uploads -------------------------------------------------------------------------


def _abort_uploads(paths: set[str]) -> int:
    """Abort every unfinished multipart upload whose key is one of `paths`."""
    aborted = 0
    folders = {storage.dirname(p) for p in paths}
    for folder in sorted(f for f in folders if not any(f.startswith(o + "/") for o in folders)):  # a listing goes deep
        try:
            for path, upload_id in _uploads(folder + "/"):
                if path in paths:
                    storage.with_retries(lambda p=path, u=upload_id: _abort(p, u))
                    aborted += 1
        except Exception as e:  # noqa: BLE001 - e.g. a key allowed to write but not to list uploads
            # Not a reason to refuse the run: its writes are as atomic as ever, only the leftovers stay.
            print(f"note: unfinished uploads under {folder} not checked ({type(e).__name__}: {e})", file=sys.stderr)
    return aborted


def _uploads(prefix: str) -> list[tuple[str, str]]:
    """(path, upload id) of the unfinished uploads directly or deeper under `prefix`."""
    fs = storage.backend(prefix)
    if prefix.startswith("oss://"):
        return storage.with_retries(lambda: fs.list_uploads(prefix))
    bucket, _, key = prefix[len("s3://") :].partition("/")
    found, markers = [], {}
    while True:
        page = storage.with_retries(lambda m=markers: fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key, **m))
        found += [(f"s3://{bucket}/{u['Key']}", u["UploadId"]) for u in page.get("Uploads", [])]
        if not page.get("IsTruncated"):
            return found
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


def _abort(path: str, upload_id: str) -> None:
    fs = storage.backend(path)
    if path.startswith("oss://"):
        fs.abort_upload(path, upload_id)
        return
    bucket, _, key = path[len("s3://") :].partition("/")
    with contextlib.suppress(FileNotFoundError):  # s3fs's NoSuchUpload: completed or aborted meanwhile
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
