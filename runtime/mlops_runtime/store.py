"""The artifact store: S3 (MinIO, SeaweedFS, AWS) through the `minio` client.

Every object written records the sha256 of its bytes (returned to the caller and kept as
object metadata); `get_verified` refuses bytes whose digest is not the expected one.
Transient failures (connection refused, timeouts, 5xx, throttling) are retried a bounded
number of times with exponential backoff, then reported as `StoreUnavailable`.

    StoreError
     ├── StoreConfigError     no endpoint, malformed s3:// URI
     ├── StoreUnavailable     unreachable / refused after bounded retries (retryable later)
     ├── ArtifactNotFound     no such bucket or key
     └── IntegrityError       bytes do not match the recorded sha256
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from minio import Minio

T = TypeVar("T")

DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
SHA256_METADATA = "sha256"
# S3 error codes worth another attempt; anything else (NoSuchKey, AccessDenied...) is final.
RETRYABLE_S3_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
     "OperationAborted", "XMinioServerNotInitialized"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
FILE_CHUNK = 1024 * 1024


class StoreError(Exception):
    """Base of every artifact-store error."""


class StoreConfigError(StoreError, ValueError):
    """The store is not configured, or a URI is not `s3://bucket/key`."""


class StoreUnavailable(StoreError):
    """S3 could not be reached, or refused us, after bounded retries."""


class ArtifactNotFound(StoreError, KeyError):
    """The bucket or key does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "artifact not found"


class IntegrityError(StoreError):
    """The bytes read do not have the sha256 that was recorded for them."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        self.uri, self.expected, self.actual = uri, expected, actual
        super().__init__(
            f"{uri}: sha256 mismatch, expected {expected} but the stored bytes have {actual}; "
            "the artifact was modified or substituted and is refused"
        )


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str, *, key_required: bool = True) -> S3Location:
    """`s3://bucket/key` -> S3Location; a clear error for anything else."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StoreConfigError(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if len(bucket) < 3:
        raise StoreConfigError(f"{uri!r}: the bucket name must have at least 3 characters")
    if key_required and not key:
        raise StoreConfigError(f"{uri!r}: no object key after the bucket name")
    return S3Location(bucket, key)


def join_uri(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(FILE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def backoff_delays(retries: int, base: float, cap: float = MAX_BACKOFF_SECONDS) -> list[float]:
    """Seconds to wait before each retry: base, 2*base, 4*base... capped."""
    return [min(cap, base * 2**attempt) for attempt in range(max(0, retries))]


@dataclass(frozen=True)
class StoreSettings:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreSettings:
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("MINIO_ENDPOINT") or ""
        if not endpoint:
            raise StoreConfigError(
                "no S3 endpoint: set AWS_ENDPOINT_URL (or MINIO_ENDPOINT), e.g. http://minio:9000"
            )
        if "://" not in endpoint:
            # MinIO's own convention is host:port plus MINIO_SECURE.
            secure = env.get("MINIO_SECURE", "").lower() in ("1", "true", "yes")
            endpoint = ("https://" if secure else "http://") + endpoint
        try:
            retries = int(env.get("MLOPS_S3_RETRIES", DEFAULT_RETRIES))
            backoff = float(env.get("MLOPS_S3_BACKOFF", DEFAULT_BACKOFF_SECONDS))
        except ValueError as error:
            raise StoreConfigError(f"MLOPS_S3_RETRIES / MLOPS_S3_BACKOFF must be numbers: {error}") from None
        return cls(
            endpoint=endpoint.rstrip("/"),
            access_key=env.get("AWS_ACCESS_KEY_ID") or env.get("MINIO_ACCESS_KEY") or "",
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or env.get("MINIO_SECRET_KEY") or "",
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            retries=max(0, retries),
            backoff=max(0.0, backoff),
        )


def make_client(settings: StoreSettings) -> Minio:
    import urllib3
    from minio import Minio

    url = urlsplit(settings.endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise StoreConfigError(f"S3 endpoint {settings.endpoint!r} is not an http(s) URL")
    # Retries are ours (bounded, with backoff, reported); urllib3's own are turned off.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=120.0),
        retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
        maxsize=8,
    )
    return Minio(
        url.netloc,
        access_key=settings.access_key or None,
        secret_key=settings.secret_key or None,
        secure=url.scheme == "https",
        region=settings.region,  # a fixed region saves a GetBucketLocation round trip per bucket
        http_client=http,
    )


class ArtifactStore:
    """Bytes in and out of `s3://bucket/key` URIs, with sha256 recorded and verified."""

    def __init__(
        self,
        client: Minio,
        *,
        endpoint: str = "",
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._known_buckets: set[str] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ArtifactStore:
        settings = StoreSettings.from_env(env)
        return cls(make_client(settings), endpoint=settings.endpoint,
                   retries=settings.retries, backoff=settings.backoff)

    # -- retries -------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        delays = backoff_delays(self.retries, self.backoff)
        for attempt in range(len(delays) + 1):
            try:
                return operation()
            except Exception as error:  # classified below; nothing is swallowed
                failure = self._classify(what, error)
                if failure is not None:
                    raise failure from error
                if attempt == len(delays):
                    raise StoreUnavailable(
                        f"S3 at {self.endpoint or 'the configured endpoint'} did not answer "
                        f"while {what}: {_short(error)} (gave up after {attempt + 1} attempts); "
                        "check AWS_ENDPOINT_URL and that the S3 server is running"
                    ) from error
                self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    def _classify(self, what: str, error: Exception) -> StoreError | None:
        """None when the error is transient (retry), else the final error to raise."""
        from minio.error import InvalidResponseError, S3Error, ServerError

        if isinstance(error, S3Error):
            if error.code in NOT_FOUND_CODES:
                return ArtifactNotFound(f"not found while {what}: {error.code} ({error.message})")
            if error.code in RETRYABLE_S3_CODES:
                return None
            if error.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreUnavailable(
                    f"S3 refused the credentials while {what}: {error.code}; check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            return StoreUnavailable(f"S3 error while {what}: {error.code} ({error.message})")
        if isinstance(error, (ServerError, InvalidResponseError)):
            return None
        if isinstance(error, StoreError):
            return error
        import urllib3.exceptions

        if isinstance(error, (OSError, urllib3.exceptions.HTTPError)):
            return None
        return StoreUnavailable(f"unexpected error while {what}: {_short(error)}")

    # -- buckets -------------------------------------------------------------------------

    def ensure_bucket(self, name: str) -> None:
        """Create the bucket when it does not exist (idempotent, race-safe)."""
        if name in self._known_buckets:
            return
        from minio.error import S3Error

        def operation() -> None:
            if self.client.bucket_exists(name):
                return
            try:
                self.client.make_bucket(name)
            except S3Error as error:
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call(f"creating bucket {name}", operation)
        self._known_buckets.add(name)

    # -- writes --------------------------------------------------------------------------

    def put_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write `data` to `uri` (creating the bucket if needed); returns its sha256."""
        location = parse_s3_uri(uri)
        digest = sha256_hex(data)
        self.ensure_bucket(location.bucket)
        self._call(
            f"writing {uri}",
            lambda: self.client.put_object(
                location.bucket, location.key, io.BytesIO(data), len(data),
                content_type=content_type, metadata={SHA256_METADATA: digest},
            ),
        )
        return digest

    def put_file(self, uri: str, path: Path | str, content_type: str = "application/octet-stream") -> str:
        """Stream the file at `path` to `uri` (never held whole in memory); returns its sha256."""
        location = parse_s3_uri(uri)
        path = Path(path)
        digest = file_sha256(path)
        size = path.stat().st_size
        self.ensure_bucket(location.bucket)

        def operation() -> None:
            with open(path, "rb") as handle:  # reopened per attempt: a retry starts from byte 0
                self.client.put_object(
                    location.bucket, location.key, handle, size,
                    content_type=content_type, metadata={SHA256_METADATA: digest},
                )

        self._call(f"writing {uri}", operation)
        return digest

    # -- reads ---------------------------------------------------------------------------

    def get_bytes(self, uri: str) -> bytes:
        location = parse_s3_uri(uri)

        def operation() -> bytes:
            response = self.client.get_object(location.bucket, location.key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"reading {uri}", operation)

    def get_verified(self, uri: str, sha256: str) -> bytes:
        """The bytes at `uri`, only if their sha256 is `sha256`; IntegrityError otherwise."""
        data = self.get_bytes(uri)
        actual = sha256_hex(data)
        if actual != sha256.strip().lower():
            raise IntegrityError(uri, sha256, actual)
        return data

    def exists(self, uri: str) -> bool:
        location = parse_s3_uri(uri)
        try:
            self._call(f"checking {uri}", lambda: self.client.stat_object(location.bucket, location.key))
        except ArtifactNotFound:
            return False
        return True

    def recorded_sha256(self, uri: str) -> str | None:
        """The sha256 recorded in the object's metadata when it was written, if any."""
        location = parse_s3_uri(uri)
        stat = self._call(f"checking {uri}", lambda: self.client.stat_object(location.bucket, location.key))
        metadata = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return metadata.get(f"x-amz-meta-{SHA256_METADATA}")


def _short(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
