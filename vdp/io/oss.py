"""Aliyun OSS behind the same few operations vdp.io.storage uses for S3, through oss2.

Configuration from the environment: OSS_ENDPOINT (e.g. https://oss-cn-hangzhou.aliyuncs.com),
OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET; optionally OSS_SECURITY_TOKEN for STS credentials.
Paths are oss://bucket/key.

Not ossfs (2025.5.0, tried on moto in OSS's dialect): open("wb") deletes the old object, then appends
(AppendObject), so a failed write leaves a partial object or none; later appends fail, PositionNotEqualToLength
(fsspec/ossfs#60, #127). Listings: KeyError with use_listings_cache=False, stale sizes with it. AccessDenied reads as
FileNotFoundError or an empty listing; exists() needs GetBucketInfo; no upload listing for debris; pins oss2==2.18.4.
Speed is not why: loopback moto, 64 MB, best of 3, ours/ossfs: 200 ranged reads 27.1/23.7 s, sequential 0.74/0.53 s,
write 1.33/0.93 s.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from vdp.io.ranged import RangedReader

PART_SIZE = 16 * 1024 * 1024  # OSS allows parts from 100 KB; S3-compatible gateways need 5 MB


def split(path: str) -> tuple[str, str]:
    rest = path.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


class _MultipartWriter(io.RawIOBase):
    """Buffers writes into parts; `complete()` publishes the object, `abort()` discards it.

    The multipart upload starts with the first full part: an object smaller than one part
    (an errors file, an index) goes up in one PUT instead, which is as atomic and a third of
    the requests.
    """

    def __init__(self, bucket, key: str):
        self._bucket, self._key = bucket, key
        self._buf = bytearray()
        self._parts: list = []
        self._upload_id: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buf += data
        while len(self._buf) >= PART_SIZE:
            self._send(bytes(self._buf[:PART_SIZE]))
            del self._buf[:PART_SIZE]
        return len(data)

    def _send(self, chunk: bytes) -> None:
        import oss2

        if self._upload_id is None:
            self._upload_id = self._bucket.init_multipart_upload(self._key).upload_id
        number = len(self._parts) + 1
        result = self._bucket.upload_part(self._key, self._upload_id, number, chunk)
        self._parts.append(oss2.models.PartInfo(number, result.etag))

    def complete(self) -> None:
        if self._upload_id is None:
            self._bucket.put_object(self._key, bytes(self._buf))
            return
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()
        self._bucket.complete_multipart_upload(self._key, self._upload_id, self._parts)

    def abort(self) -> None:
        if self._upload_id is not None:
            self._bucket.abort_multipart_upload(self._key, self._upload_id)


class OSSFileSystem:
    """The operations vdp.io.storage needs, for oss:// paths."""

    def __init__(self, endpoint: str, key_id: str, key_secret: str, token: str | None = None):
        import oss2

        self._oss2 = oss2
        self._auth = oss2.StsAuth(key_id, key_secret, token) if token else oss2.Auth(key_id, key_secret)
        self._endpoint = endpoint
        self._buckets: dict = {}

    @classmethod
    def from_env(cls) -> OSSFileSystem:
        missing = [v for v in ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET") if not os.environ.get(v)]
        if missing:
            raise PermissionError(f"oss:// needs the environment variables {', '.join(missing)}")
        return cls(
            os.environ["OSS_ENDPOINT"],
            os.environ["OSS_ACCESS_KEY_ID"],
            os.environ["OSS_ACCESS_KEY_SECRET"],
            os.environ.get("OSS_SECURITY_TOKEN"),
        )

    def _bucket(self, name: str):
        if name not in self._buckets:
            self._buckets[name] = self._oss2.Bucket(self._auth, self._endpoint, name)
        return self._buckets[name]

    def _head(self, path: str):
        bucket, key = split(path)
        try:
            return self._bucket(bucket).head_object(key)
        except self._oss2.exceptions.NotFound:
            raise FileNotFoundError(path) from None

    def bucket_exists(self, name: str) -> bool:
        try:
            next(iter(self._oss2.ObjectIterator(self._bucket(name), max_keys=1)), None)
            return True
        except self._oss2.exceptions.NoSuchBucket:
            return False

    def exists(self, path: str) -> bool:
        bucket, key = split(path)
        return self._bucket(bucket).object_exists(key) or self.isdir(path)

    def isdir(self, path: str) -> bool:
        bucket, key = split(path)
        prefix = key.rstrip("/") + "/"
        return any(True for _ in self._oss2.ObjectIterator(self._bucket(bucket), prefix=prefix, max_keys=1))

    def info(self, path: str) -> dict:
        try:
            return {"type": "file", "size": self.size(path)}
        except FileNotFoundError:
            if self.isdir(path):
                return {"type": "directory", "size": 0}
            raise

    def size(self, path: str) -> int:
        return int(self._head(path).content_length)

    def cat_file(self, path: str) -> bytes:
        bucket, key = split(path)
        try:
            return self._bucket(bucket).get_object(key).read()
        except self._oss2.exceptions.NoSuchKey:
            raise FileNotFoundError(path) from None

    def _range_reader(self, bucket: str, key: str) -> Callable[[int, int], bytes]:
        """fetch(start, end) -> bytes start..end-1 of the object, one ranged GET (OSS ranges are inclusive)."""
        handle = self._bucket(bucket)
        return lambda start, end: handle.get_object(key, byte_range=(start, end - 1)).read()

    def open(self, path: str, mode: str = "rb", **_):
        bucket, key = split(path)
        return io.BufferedReader(RangedReader(self._range_reader(bucket, key), self.size(path)), 16 * 1024 * 1024)

    def find(self, prefix: str) -> list[str]:
        bucket, key = split(prefix)
        key = key.rstrip("/") + "/" if key else ""
        return [f"oss://{bucket}/{o.key}" for o in self._oss2.ObjectIterator(self._bucket(bucket), prefix=key)]

    def list_uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(path, upload id) of every unfinished multipart upload under `prefix` (oss://bucket/folder/)."""
        bucket, key = split(prefix)
        uploads = self._oss2.MultipartUploadIterator(self._bucket(bucket), prefix=key)
        return [(f"oss://{bucket}/{u.key}", u.upload_id) for u in uploads if not u.is_prefix()]

    def abort_upload(self, path: str, upload_id: str) -> None:
        bucket, key = split(path)
        try:
            self._bucket(bucket).abort_multipart_upload(key, upload_id)
        except self._oss2.exceptions.NoSuchUpload:
            pass  # completed or aborted meanwhile: nothing left either way

    def write_atomically(self, path: str, fill: Callable) -> None:
        bucket, key = split(path)
        writer = _MultipartWriter(self._bucket(bucket), key)
        try:
            fill(writer)
        except BaseException:
            writer.abort()
            raise
        writer.complete()
