"""S3 backend through the ``minio`` client: SeaweedFS, MinIO, AWS S3.

- The bucket is created on first use (once per process; a concurrent creator is fine).
- Large objects stream up as multipart uploads of ``part_size`` (minio does the
  split), one part at a time so the deadline bounds each; S3 makes the object
  visible only once the upload completes, so a reader never sees part of an
  object, and a failed upload is aborted.
- Transient failures (connection errors, timeouts, 5xx, SlowDown) are retried with
  exponential back-off; seekable bodies are rewound for the retry.
- Every operation, retries included, ends within ``deadline`` seconds (and within the
  calling request's deadline, cluster.deadline): each HTTP call's connect and read
  timeouts are cut to the time left, and no retry starts that could not finish, so
  an unreachable or hung endpoint becomes StorageUnavailable (a 503) in seconds.
- Bad credentials raise StorageAuthError, an unreachable endpoint
  StorageUnavailable, each with a message naming the endpoint.
"""

from __future__ import annotations

import email.utils
import io
import threading
import time
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.helpers import check_bucket_name
from minio.error import MinioException, S3Error, ServerError

from cluster.config import S3StoreConfig

from cluster import deadline as request_deadline
from .base import (
    AlreadyExists, BlobStore, Conflict, Data, NotFound, ObjectInfo, StorageAuthError, StorageError,
    StorageUnavailable, as_stream, check_key, check_prefix,
)

T = TypeVar("T")

AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
#: a conditional write whose condition failed: the object changed (409: a concurrent write won)
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
LIST_PAGE = 1000  # keys per listing request, as S3 pages them
TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}


class _ObjectStream(io.RawIOBase):
    """A readable stream over a minio response that returns the connection on close."""

    def __init__(self, response):
        self._resp = response

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self._resp.read(len(buf))
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # cut off mid-stream: no retry possible here
            raise StorageUnavailable(f"S3 stream broke while reading: {exc}") from None
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
            self._resp.release_conn()
        super().close()


#: what the abort of a failed multipart upload may take past the operation's deadline
ABORT_SECONDS = 1.0


class _DeadlinePool(urllib3.PoolManager):
    """A PoolManager whose calls, inside an operation, get timeouts cut to the operation's time left.

    minio makes its HTTP calls through ``urlopen`` with no timeout of its own, so this
    is the one place where each call (multipart parts included: ``put`` sends them from
    the calling thread) can be bounded. A multipart upload that failed is aborted even
    past the deadline, within ``ABORT_SECONDS``, so its parts do not stay stored.
    """

    def __init__(self, connect: float, read: float, **kw):
        super().__init__(timeout=urllib3.Timeout(connect=connect, read=read), **kw)
        self._connect, self._read = connect, read
        self._local = threading.local()

    @contextmanager
    def until(self, when: float):
        outer = getattr(self._local, "until", None)
        self._local.until = when if outer is None else min(outer, when)
        try:
            yield
        finally:
            self._local.until = outer

    def urlopen(self, method, url, redirect=True, **kw):
        when = getattr(self._local, "until", None)
        if when is not None:
            left = when - time.monotonic()
            if method == "DELETE" and "uploadId=" in url:
                left = max(left, ABORT_SECONDS)  # the clean-up of a failed multipart upload, past the deadline
            if left <= 0:
                raise urllib3.exceptions.TimeoutError("the storage operation's deadline has passed")
            kw["timeout"] = urllib3.Timeout(connect=min(self._connect, left), read=min(self._read, left))
        return super().urlopen(method, url, redirect=redirect, **kw)


class S3Store(BlobStore):
    name = "s3"

    def __init__(self, cfg: S3StoreConfig, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self._sleep = sleep
        http = _DeadlinePool(
            cfg.connect_timeout, cfg.read_timeout,
            maxsize=16,
            retries=False,  # our own loop retries, with back-off and rewinding
        )
        self._http = http
        self.client = Minio(
            cfg.endpoint,
            access_key=cfg.access_key or None,
            secret_key=cfg.secret_key or None,
            secure=cfg.secure,
            region=cfg.region,
            http_client=http,
        )
        try:
            check_bucket_name(cfg.bucket)
        except ValueError as exc:
            raise StorageError(f"storage.s3.bucket: {exc}") from None
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- error handling -------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], rewind: BinaryIO | None = None) -> T:
        pos = rewind.tell() if rewind is not None and rewind.seekable() else None
        delay = self.cfg.retry_backoff
        attempts = max(1, self.cfg.retries)
        started = time.monotonic()
        until = started + self.cfg.deadline
        outer = request_deadline.until()
        if outer is not None:
            if outer <= started:
                raise StorageUnavailable(f"S3 {what} not started: the request's deadline has passed")
            until = min(until, outer)
        attempt, last = 0, None
        for attempt in range(1, attempts + 1):
            try:
                with self._http.until(until):
                    return fn()
            except S3Error as exc:
                if exc.code in NOT_FOUND_CODES:
                    raise NotFound(what) from None
                if exc.code in AUTH_CODES:
                    raise StorageAuthError(
                        f"S3 endpoint {self.cfg.endpoint} refused the credentials ({exc.code}) for {what}"
                    ) from None
                if exc.code not in TRANSIENT_CODES or attempt == attempts:
                    raise StorageError(f"S3 {what} failed: {exc.code}: {exc.message}") from None
                last = exc
            except ServerError as exc:
                if exc.status_code == 403:
                    raise StorageAuthError(f"S3 endpoint {self.cfg.endpoint} refused the credentials for {what}") from None
                last = exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last = exc
            except MinioException as exc:
                raise StorageError(f"S3 {what} failed: {exc}") from None
            if attempt == attempts:
                break
            if pos is None and rewind is not None:
                break  # a consumed, unseekable body cannot be sent again
            if time.monotonic() + delay >= until:
                break  # no time left for another attempt within the deadline
            if pos is not None:
                rewind.seek(pos)
            self._sleep(delay)
            delay *= 2
        raise StorageUnavailable(
            f"S3 endpoint {self.cfg.endpoint} unreachable or failing for {what} after {attempt} attempt(s) "
            f"in {time.monotonic() - started:.1f}s: {last}"
        ) from None

    def _bucket(self) -> str:
        if not self._bucket_ready:
            with self._bucket_lock:
                if not self._bucket_ready:
                    bucket = self.cfg.bucket
                    if not self._call("bucket check", lambda: self.client.bucket_exists(bucket)):
                        try:
                            self._call("bucket create", lambda: self.client.make_bucket(bucket))
                        except StorageError as exc:
                            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                                raise
                    self._bucket_ready = True
        return self.cfg.bucket

    # -- the contract ----------------------------------------------------------------
    def put(self, key: str, data: Data, content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        bucket = self._bucket()
        stream = as_stream(data)
        length = -1
        if stream.seekable():
            here = stream.tell()
            length = stream.seek(0, io.SEEK_END) - here
            stream.seek(here)
        part_size = self.cfg.part_size if length < 0 or length > self.cfg.part_size else 0
        result = self._call(
            f"put {key}",
            # one part at a time, from this thread: the deadline bounds each (minio's parallel
            # part threads would not know it)
            lambda: self.client.put_object(bucket, key, stream, length, content_type=content_type, part_size=part_size,
                                           num_parallel_uploads=1),
            rewind=stream,
        )
        if length < 0:  # streamed with no length: only the store knows the size
            return self.stat(key)
        # the PUT's own answer describes the object: no HEAD after every write (one round trip less)
        return ObjectInfo(key=key, size=length, mtime=_response_time(result.http_headers),
                          etag=(result.etag or "").strip('"'))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        check_key(key)
        bucket = self._bucket()

        def fetch() -> tuple[bytes, str]:
            resp = self.client.get_object(bucket, key)
            try:
                return resp.read(), (resp.headers.get("ETag") or "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get {key}", fetch)

    def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> ObjectInfo:
        # a retried PUT whose first try landed but whose answer was lost reports Conflict (its own
        # write changed the etag): the caller's re-read then shows the change made
        return self._put_if(key, data, content_type, {"If-Match": f'"{etag}"'},
                            lambda code: Conflict(f"{key}: changed or deleted since it was read ({code})"))

    def copy(self, src: str, dst: str) -> None:
        check_key(src)
        check_key(dst)
        bucket = self._bucket()
        # server-side (CopyObject): the metadata, content type included, goes with the bytes
        self._call(f"copy {src}", lambda: self.client.copy_object(bucket, dst, CopySource(bucket, src)))

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        # the conditional PUT closes the race of two creators where the store supports it;
        # the look first answers at once everywhere
        if self.exists(key):
            raise AlreadyExists(key)
        return self._put_if(key, data, content_type, {"If-None-Match": "*"}, lambda code: AlreadyExists(key))

    def _put_if(self, key: str, data: bytes, content_type: str, condition: dict[str, str],
                failed: Callable[[str], StorageError]) -> ObjectInfo:
        """A conditional PUT (``If-Match``/``If-None-Match``: AWS, MinIO, SeaweedFS 3.97+). minio's
        put_object has no such option, so this goes through its one-request PutObject with the
        header added (``_put_object`` of the pinned minio; signed as every other request). The
        error ``failed(code)`` makes is raised when the condition does not hold."""
        check_key(key)
        bucket = self._bucket()
        body = bytes(data)
        headers = {"Content-Type": content_type, **condition}

        def put() -> ObjectInfo:
            try:
                result = self.client._put_object(bucket, key, body, headers=headers)
            except S3Error as exc:
                if exc.code in CONFLICT_CODES or ("If-Match" in condition and exc.code in NOT_FOUND_CODES):
                    raise failed(exc.code) from None
                raise
            return ObjectInfo(key=key, size=len(body), mtime=_response_time(result.http_headers),
                              etag=(result.etag or "").strip('"'))

        return self._call(f"put {key} ({', '.join(condition)})", put)

    def _fetch(self, key: str, **window: int) -> bytes:
        """The object (or ``offset``/``length`` of it), read whole inside the retry loop,
        so a body cut off mid-way is fetched again."""
        check_key(key)
        bucket = self._bucket()

        def fetch() -> bytes:
            resp = self.client.get_object(bucket, key, **window)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"get {key}", fetch)

    def get(self, key: str) -> bytes:
        return self._fetch(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            check_key(key)
            return b""
        try:
            return self._fetch(key, offset=start, length=length)
        except StorageError as exc:
            if "InvalidRange" in str(exc):
                return b""
            raise

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        bucket = self._bucket()
        resp = self._call(f"get {key}", lambda: self.client.get_object(bucket, key))
        return io.BufferedReader(_ObjectStream(resp), 256 * 1024)

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        bucket = self._bucket()
        st = self._call(f"stat {key}", lambda: self.client.stat_object(bucket, key))
        mtime = st.last_modified.timestamp() if st.last_modified else 0.0
        return ObjectInfo(key=key, size=st.size or 0, mtime=mtime, etag=(st.etag or "").strip('"'))

    def delete(self, key: str) -> None:
        check_key(key)
        bucket = self._bucket()
        try:
            self._call(f"delete {key}", lambda: self.client.remove_object(bucket, key))
        except NotFound:
            pass

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        """Keys a page at a time; a transient failure mid-page is retried from the last key received.

        (A listing generator that raised is finished: retrying ``next()`` on it would end
        the listing early and silently, so each attempt starts a fresh listing after the
        last key it already has.)
        """
        check_prefix(prefix)
        bucket = self._bucket()
        last = start_after
        while True:
            got: list[str] = []

            def page() -> list[str]:
                after = got[-1] if got else last
                for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True,
                                                    start_after=after or None):
                    if not obj.is_dir and obj.object_name > after:
                        got.append(obj.object_name)
                        if len(got) == LIST_PAGE:
                            break
                return got

            keys = self._call(f"list {prefix}", page)
            yield from keys
            if len(keys) < LIST_PAGE:
                return
            last = keys[-1]

    def close(self) -> None:
        self.client._http.clear()


def _response_time(headers) -> float:
    """When the store wrote the object: its answer's Date header (S3 has second precision), else now."""
    try:
        return email.utils.parsedate_to_datetime(headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()
