"""S3AdapterStore: the adapter store in an S3 bucket (AWS S3 or an S3-compatible server such as MinIO
or Ceph RGW), shared by replicas on any number of machines (``SPLITASR_ADAPTER_STORE_URL``).

Layout under ``s3://bucket/prefix``::

    <prefix>/blobs/<sha256[:2]>/<sha256>.safetensors   immutable, named by the sha256 of the bytes
    <prefix>/tenants/<tenant>.json                    {name: {sha256, kind, size, created_at}}

The local folder's guarantees, by S3's own means (no lock spans machines):

* **All or nothing.** A PUT makes the whole object visible at once or not at all, and each blob is
  sent with its SHA-256 checksum, so the server refuses a body damaged on the way. Every read checks
  the bytes against the sha256 the blob is named by: an object changed or damaged in the bucket is
  refused (:class:`~splitasr.errors.StoredAdapterCorrupt`) and never loaded.
* **Concurrent writers.** A tenant's index is replaced only by a conditional PUT (``If-Match`` the
  ETag it was read with, ``If-None-Match: *`` for a first one). A writer that lost a race reads the
  index again and retries, so uploads and deletes through different replicas never drop each other's
  names, and quotas, checked against the index on every attempt, hold across all of them. The server
  must honour conditional writes (AWS S3 does since 2024; MinIO, Ceph RGW and moto do).
* **Deletes.** A name is removed from the index at once (the tenant can no longer reach its blob).
  The blob goes at a later :meth:`S3AdapterStore.sweep`, once no name points at it and it was last
  written more than ``blob_grace_s`` ago. An upload writes its blob, then its name, then checks that
  the blob is still there (and writes it again if a sweep removed it meanwhile); a sweep re-reads
  every index after its deletes and puts back any blob a name came to point at. Between them no
  name is left without its blob.
* **Pins.** A request that holds a blob (:meth:`S3AdapterStore.pinned`) has its checked bytes in this
  process's memory until it is done, so a delete anywhere meanwhile cannot take them away. Recently
  read blobs stay cached too (``cache_bytes``): they are immutable, so a cached copy is never stale.
* **Errors.** A missing object is :class:`~splitasr.errors.NotFound`; an unreachable server or one
  that refuses a request is :class:`~splitasr.errors.StoreUnavailable` (503 / UNAVAILABLE, retryable).

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance or pod role); ``endpoint_url`` points at an S3-compatible server. Needs
the ``s3`` extra (``boto3``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TypeVar
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import InvalidInput, NotFound, PermissionDenied, StoredAdapterCorrupt, StoreUnavailable
from .store import TENANT_PATTERN, AdapterRecord, BaseStore, Validator, check_name, check_sha256

log = logging.getLogger(__name__)

BLOB_GRACE_S = 600.0  # a blob no name points at stays this long after it was last written
CACHE_BYTES = 128 * 1024 * 1024  # recently read blobs kept in memory (pinned ones always are)
SWEEP_BATCH_BYTES = 64 * 1024 * 1024  # blobs a sweep removes before it reads the indices again
INDEX_WRITE_ATTEMPTS = 64  # conditional index writes lost to other writers before giving up (503)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_CONFLICT = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})

T = TypeVar("T")


def parse_store_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/") (the prefix may be empty)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise InvalidInput(f"adapter store URL {url!r} is not of the form s3://bucket/prefix")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error or status or "")


class S3AdapterStore(BaseStore):
    def __init__(self, url: str, *, endpoint_url: str | None = None, max_adapters_per_tenant: int = 100,
                 max_bytes_per_tenant: int = 1 << 30, sweep_interval_s: float = 0.0,
                 blob_grace_s: float = BLOB_GRACE_S, cache_bytes: int = CACHE_BYTES):
        """Open ``url`` (``s3://bucket/prefix``; the bucket must exist) and sweep it once;
        ``sweep_interval_s`` > 0 sweeps again that often in a daemon thread."""
        self.url = url
        self.bucket, self.prefix = parse_store_url(url)
        self.max_adapters = max_adapters_per_tenant
        self.max_bytes = max_bytes_per_tenant
        self.blob_grace_s = blob_grace_s
        self.cache_bytes = cache_bytes
        config = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                        # S3-compatible servers are addressed by path (no bucket subdomains to resolve)
                        s3={"addressing_style": "path"} if endpoint_url else None)
        session = boto3.session.Session()
        # an empty AWS_DEFAULT_REGION (compose passes unset variables as "") would make no valid endpoint;
        # S3 redirects a client in another region to the bucket's own
        self.client = session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1",
                                     config=config)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()  # sha256 -> checked bytes, oldest first
        self._cached_bytes = 0
        self._pins: Counter[str] = Counter()  # sha256 -> requests in this process holding it
        with self._s3(f"open the bucket {self.bucket!r}"):
            self.client.head_bucket(Bucket=self.bucket)
        self.sweep()
        self._stop = threading.Event()
        if sweep_interval_s > 0:
            threading.Thread(target=self._sweep_every, args=(sweep_interval_s,), name="store-sweeper",
                             daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    # keys and S3 calls ---------------------------------------------------------------------------
    def _blob_key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256}.safetensors"

    def _index_key(self, tenant: str) -> str:
        if not TENANT_PATTERN.fullmatch(tenant):
            raise PermissionDenied("invalid tenant")
        return f"{self.prefix}tenants/{tenant}.json"

    @contextlib.contextmanager
    def _s3(self, what: str) -> Iterator[None]:
        """S3's failures as :class:`StoreUnavailable`, naming what could not be done."""
        try:
            yield
        except ClientError as exc:
            log.error("adapter store %s: could not %s: %s", self.url, what, exc)
            raise StoreUnavailable(f"the adapter store refused to {what} ({_code(exc)}); retry later") from None
        except BotoCoreError as exc:
            log.error("adapter store %s: could not %s: %s", self.url, what, exc)
            raise StoreUnavailable(f"the adapter store could not be reached to {what}; retry later") from None

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of an object, or None when there is none."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
            return reply["Body"].read(), reply["ETag"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise

    def _put_blob(self, sha256: str, data: bytes) -> None:
        # the server checks the body against this checksum: a damaged upload is refused, not stored
        self.client.put_object(Bucket=self.bucket, Key=self._blob_key(sha256), Body=data,
                               ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                               ContentType="application/octet-stream")

    def _keys(self, under: str) -> Iterator[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + under)
        for page in pages:
            yield from page.get("Contents", ())

    # index ---------------------------------------------------------------------------------------
    def _read_index(self, tenant: str) -> tuple[dict[str, AdapterRecord], str | None]:
        """The tenant's index and the ETag to replace it with (None: there is no index yet)."""
        got = self._get(self._index_key(tenant))
        if got is None:
            return {}, None
        raw = json.loads(got[0])
        return {name: AdapterRecord(name=name, **fields) for name, fields in raw.items()}, got[1]

    def _write_index(self, tenant: str, index: dict[str, AdapterRecord], etag: str | None) -> bool:
        """Replace the index if nobody else did since it was read; False when somebody did."""
        body = {n: {k: v for k, v in asdict(r).items() if k != "name"} for n, r in sorted(index.items())}
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._index_key(tenant), Body=json.dumps(body, indent=1),
                                   ContentType="application/json", **condition)
            return True
        except ClientError as exc:
            if _code(exc) in _CONFLICT:
                return False
            raise

    def _update(self, tenant: str, change: Callable[[dict[str, AdapterRecord]], T]) -> T:
        """Apply ``change`` to the tenant's index as stored, and write it back if nobody wrote it
        meanwhile; else read it again and retry. ``change`` raising leaves the index as it is."""
        for attempt in range(INDEX_WRITE_ATTEMPTS):
            index, etag = self._read_index(tenant)
            result = change(index)
            if self._write_index(tenant, index, etag):
                return result
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** attempt)))
        raise StoreUnavailable("too many concurrent changes to this tenant's adapters; retry")

    def _tenants(self) -> list[str]:
        tail = f"{self.prefix}tenants/"
        return [o["Key"][len(tail):].removesuffix(".json") for o in self._keys("tenants/")
                if o["Key"].endswith(".json")]

    def _referenced(self) -> set[str]:
        return {r.sha256 for t in self._tenants() if TENANT_PATTERN.fullmatch(t)
                for r in self._read_index(t)[0].values()}

    # queries -------------------------------------------------------------------------------------
    def list(self, tenant: str) -> list[AdapterRecord]:
        with self._s3("list adapters"):
            return sorted(self._read_index(tenant)[0].values(), key=lambda r: r.name)

    def get(self, tenant: str, name: str) -> AdapterRecord:
        check_name(name)
        with self._s3("read an adapter's record"):
            record = self._read_index(tenant)[0].get(name)
        if record is None:
            raise NotFound(f"adapter {name!r} does not exist")
        return record

    def read(self, sha256: str) -> bytes:
        sha256 = check_sha256(sha256)
        with self._lock:
            if sha256 in self._cache:
                self._cache.move_to_end(sha256)
                return self._cache[sha256]
        with self._s3("read an adapter"):
            got = self._get(self._blob_key(sha256))
        if got is None:
            raise NotFound(f"adapter {sha256[:12]}… no longer exists (it was deleted)")
        data = got[0]
        if hashlib.sha256(data).hexdigest() != sha256:
            log.error("adapter store %s: blob %s does not match its sha256 (%d bytes): refused", self.url,
                      sha256, len(data))
            raise StoredAdapterCorrupt(f"the stored adapter {sha256[:12]}… does not match its sha256 (the object "
                                       "was changed or damaged in the store); it was not loaded")
        self._remember(sha256, data)
        return data

    def _remember(self, sha256: str | None = None, data: bytes = b"") -> None:
        """Cache a checked blob; then trim the cache to its budget, oldest first (never a pinned one)."""
        with self._lock:
            if sha256 is not None and sha256 not in self._cache:
                self._cache[sha256] = data
                self._cached_bytes += len(data)
            for old in [s for s in self._cache if s not in self._pins]:
                if self._cached_bytes <= self.cache_bytes:
                    break
                self._cached_bytes -= len(self._cache.pop(old))

    @contextlib.contextmanager
    def pinned(self, *sha256s: str | None) -> Iterator[None]:
        """Hold these blobs' bytes in this process for the ``with`` block (None entries are skipped):
        deletes anywhere meanwhile do not take them away. Raises :class:`NotFound` when one is gone."""
        held: list[str] = []
        try:
            for sha in dict.fromkeys(s for s in sha256s if s):
                sha = check_sha256(sha)
                with self._lock:
                    self._pins[sha] += 1  # before the read: the cache keeps it from now on
                held.append(sha)
                try:
                    self.read(sha)
                except NotFound:
                    raise NotFound("the adapter this request names was deleted before the request could use it") \
                        from None
            yield
        finally:
            with self._lock:
                for sha in held:
                    self._pins[sha] -= 1
                    if self._pins[sha] <= 0:
                        del self._pins[sha]
            self._remember()  # blobs just let go of may leave the cache

    def pinned_count(self) -> int:
        with self._lock:
            return len(self._pins)

    # mutations -----------------------------------------------------------------------------------
    def put(self, tenant: str, name: str, data: bytes, validate: Validator,
            expected_sha256: str | None = None) -> AdapterRecord:
        """Validate and store ``data`` under ``tenant``/``name`` (replacing an earlier one of that name)."""
        sha256, kind = self._checked(name, data, validate, expected_sha256)
        record = AdapterRecord(name, sha256, kind, len(data), time.time())

        def add(index: dict[str, AdapterRecord]) -> None:
            self._check_quota(index, name, len(data))
            index[name] = record

        with self._s3("store an adapter"):
            self._check_quota(self._read_index(tenant)[0], name, len(data))  # before sending the bytes
            self._put_blob(sha256, data)  # written (again) first: a sweep spares it for blob_grace_s
            self._update(tenant, add)
            if not self._exists(self._blob_key(sha256)):  # a sweep removed it between the two writes
                log.warning("adapter store %s: blob %s was swept during its upload; writing it again", self.url,
                            sha256)
                self._put_blob(sha256, data)
        self._remember(sha256, data)
        return record

    def delete(self, tenant: str, name: str) -> AdapterRecord:
        """Remove the name at once; its blob goes at a sweep once no name points at it."""
        check_name(name)

        def remove(index: dict[str, AdapterRecord]) -> AdapterRecord:
            record = index.pop(name, None)
            if record is None:
                raise NotFound(f"adapter {name!r} does not exist")
            return record

        with self._s3("delete an adapter"):
            return self._update(tenant, remove)

    def sweep(self) -> dict[str, int]:
        """Remove blobs no name points at that were last written over ``blob_grace_s`` ago (and that
        no request in this process holds); returns and logs the counts."""
        removed = kept = 0
        with self._s3("sweep"):
            referenced = self._referenced()
            cutoff = time.time() - self.blob_grace_s
            candidates = []
            for item in self._keys("blobs/"):
                sha = item["Key"].rsplit("/", 1)[-1].removesuffix(".safetensors")
                with self._lock:
                    held = sha in self._pins
                if sha in referenced or held or item["LastModified"].timestamp() > cutoff:
                    kept += 1
                else:
                    candidates.append((sha, item["Key"], item["Size"]))
            while candidates:  # in batches, so that the copies kept meanwhile stay small
                batch, size = [], 0
                while candidates and (not batch or size + candidates[0][2] <= SWEEP_BATCH_BYTES):
                    batch.append(candidates.pop(0))
                    size += batch[-1][2]
                copies = {}
                for sha, key, _ in batch:
                    got = self._get(key)  # kept until the indices are read again below
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                    if got is not None and hashlib.sha256(got[0]).hexdigest() == sha:
                        copies[sha] = got[0]
                    removed += 1
                # an upload of the same bytes may have named one of them meanwhile: put it back
                for sha in self._referenced() & set(copies):
                    log.warning("adapter store %s: blob %s was named during the sweep; restored", self.url, sha)
                    self._put_blob(sha, copies[sha])
                    removed, kept = removed - 1, kept + 1
        counts = {"removed_blobs": removed, "removed_temp_files": 0, "kept_blobs": kept}
        level = logging.WARNING if removed else logging.INFO
        log.log(level, "adapter store %s: removed %d blobs no name points at; %d blobs in use or recent", self.url,
                removed, kept, extra=counts)
        return counts

    def _sweep_every(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sweep()
            except StoreUnavailable as exc:  # a transient outage: try again next time
                log.error("adapter store sweep failed: %s", exc)
