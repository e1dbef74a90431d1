"""Adapter stores: adapter files, content-addressed, with per-tenant names.

Two backends share one interface (:class:`BaseStore`) and one behaviour: :class:`AdapterStore`, a
local (or shared-filesystem) folder, described here, and
:class:`~splitasr.storage.s3.S3AdapterStore`, an S3 bucket that replicas on several machines
share (``SPLITASR_ADAPTER_STORE_URL=s3://bucket/prefix``). :func:`open_store` picks one from the
settings.

Layout under ``root``::

    blobs/<sha256[:2]>/<sha256>.safetensors     immutable, named by the sha256 of the bytes
    tenants/<tenant>.json                       {name: {sha256, kind, size, created_at}}

Every write is atomic (temp file in the same folder, fsync, rename, fsync folder), so a crash or a
dropped connection leaves either the old state or the new one, never a partial file. A tenant sees
only its own names: a hash is reachable only through a name the tenant owns, so knowing another
tenant's hash gives nothing. Blobs no name points at are deleted.

Mutations hold an exclusive ``flock`` on ``<root>/.lock`` (besides a thread lock), so processes that
share the folder never interleave one upload's blob and index writes with another's sweep. A crash
between the two writes (a new blob, its name not yet written; a name deleted, its blob not yet) can
leave a blob no name points at, and a temp file: :meth:`AdapterStore.sweep` removes both, under the
same lock (so every temp file it sees is a dead writer's). It runs at start-up and then every
``sweep_interval_s`` seconds, and logs what it removed.

A request that uses an adapter holds its blob (:meth:`AdapterStore.pinned`) until it finishes: a
``DELETE`` meanwhile removes the name at once, and the blob when the last request holding it is
done, in whichever process that request runs. A process holds a blob with a shared ``flock`` on the
blob file itself (one descriptor per blob, reference-counted inside the process); a blob is removed
only under an exclusive, non-blocking ``flock`` on it, so a blob some process holds is never
unlinked. When a delete finds the blob held elsewhere it leaves a ``<sha256>.doomed`` marker next to
it; the process that lets go of the blob last sees the marker and removes the blob (the sweep also
does). Nothing is cached in memory: every query reads the tenant's index from disk (whole files,
replaced by rename, so a reader sees the old index or the new one), and quotas are checked under the
folder's lock against the index as it is on disk, so they hold across every process sharing the
folder. ``flock`` works on local filesystems and NFSv4; a blob removed by another process reads as
:class:`~splitasr.errors.NotFound`, never as a bare ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidInput, NotFound, PermissionDenied, StorageFull, TooLarge
from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    sha256: str
    kind: str
    size: int
    created_at: float


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"invalid adapter name {shown}: use 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def check_sha256(value: str) -> str:
    value = (value or "").lower()
    if not SHA256_PATTERN.fullmatch(value):
        raise InvalidInput("sha256 must be 64 hexadecimal characters")
    return value


# a full disk (or quota, or RLIMIT_FSIZE) while writing: the client can do nothing but retry later
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def _space_errors(what: str):
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        log.error("adapter store: no space left while writing %s (%s)", what, exc.strerror)
        raise StorageFull("the adapter store is out of disk space; nothing was stored. Retry later "
                          "or delete adapters you no longer need") from None


# validate(bytes) -> kind; raises InvalidAdapter with a clear message when the file is not acceptable
Validator = Callable[[bytes], str]


class BaseStore(ABC):
    """What the engine and the transports use, whichever backend holds the files.

    Guarantees every backend keeps: a write is all or nothing (no half-written adapter is ever
    readable); a tenant reaches a blob only through a name it owns; quotas are checked against the
    index as stored, so they hold across every process sharing the store; a missing adapter is
    :class:`~splitasr.errors.NotFound`; a request holding a blob (:meth:`pinned`) can read it until it
    lets go, whatever deletes happen meanwhile."""

    max_adapters: int
    max_bytes: int

    @abstractmethod
    def list(self, tenant: str) -> list[AdapterRecord]: ...

    @abstractmethod
    def get(self, tenant: str, name: str) -> AdapterRecord:
        """The tenant's record of that name; :class:`NotFound` when there is none."""

    def find_by_hash(self, tenant: str, sha256: str) -> AdapterRecord | None:
        """The tenant's record for ``sha256``, or None. Other tenants' adapters are invisible."""
        sha256 = check_sha256(sha256)
        return next((r for r in self.list(tenant) if r.sha256 == sha256), None)

    @abstractmethod
    def read(self, sha256: str) -> bytes:
        """The blob's bytes; :class:`NotFound` when it was deleted."""

    @abstractmethod
    def pinned(self, *sha256s: str | None) -> contextlib.AbstractContextManager[None]:
        """Hold these blobs for the ``with`` block (see the backends)."""

    @abstractmethod
    def pinned_count(self) -> int: ...

    @abstractmethod
    def put(self, tenant: str, name: str, data: bytes, validate: Validator,
            expected_sha256: str | None = None) -> AdapterRecord: ...

    @abstractmethod
    def delete(self, tenant: str, name: str) -> AdapterRecord: ...

    @abstractmethod
    def sweep(self) -> dict[str, int]: ...

    def close(self) -> None:
        """Stop background work (the periodic sweep)."""

    @staticmethod
    def _checked(name: str, data: bytes, validate: Validator, expected_sha256: str | None) -> tuple[str, str]:
        """(sha256, kind) of an upload whose name, announced hash and content are acceptable."""
        check_name(name)
        sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 and check_sha256(expected_sha256) != sha256:
            raise InvalidInput(f"upload is corrupt: sha256 is {sha256}, the client announced {expected_sha256}")
        return sha256, validate(data)

    def _check_quota(self, index: dict[str, AdapterRecord], name: str, size: int) -> None:
        others = [r for n, r in index.items() if n != name]
        if len(others) + 1 > self.max_adapters:
            raise TooLarge(f"adapter quota reached: at most {self.max_adapters} adapters per tenant; delete one first")
        used = sum(r.size for r in others)
        if used + size > self.max_bytes:
            raise TooLarge(
                f"storage quota reached: {used + size} bytes would exceed {self.max_bytes} bytes per tenant"
            )


class AdapterStore(BaseStore):
    """The local backend: a folder (on a local filesystem, or NFSv4 shared by several hosts)."""

    def __init__(self, root: Path, *, max_adapters_per_tenant: int = 100, max_bytes_per_tenant: int = 1 << 30,
                 sweep_interval_s: float = 0.0):
        """``sweep_interval_s``: run :meth:`sweep` this often in a daemon thread (0 = at start-up only)."""
        self.root = Path(root)
        self.max_adapters = max_adapters_per_tenant
        self.max_bytes = max_bytes_per_tenant
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._pins: Counter[str] = Counter()  # sha256 -> requests in this process holding it
        self._pin_fds: dict[str, int] = {}  # sha256 -> the descriptor whose shared flock holds it
        self._doomed: set[str] = set()  # pinned blobs whose last name was deleted
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tenants").mkdir(parents=True, exist_ok=True)
        self.sweep()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if sweep_interval_s > 0:
            self._sweeper = threading.Thread(target=self._sweep_every, args=(sweep_interval_s,),
                                             name="store-sweeper", daemon=True)
            self._sweeper.start()

    def close(self) -> None:
        """Stop the periodic sweep."""
        self._stop.set()

    # paths ---------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / f"{sha256}.safetensors"

    def _doomed_marker(self, sha256: str) -> Path:
        return self.blob_path(sha256).with_suffix(".doomed")

    def _index_path(self, tenant: str) -> Path:
        if not TENANT_PATTERN.fullmatch(tenant):
            raise PermissionDenied("invalid tenant")
        return self.root / "tenants" / f"{tenant}.json"

    # cross-process exclusion and the sweep ----------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread alone in this process (RLock), and this process alone on the folder (flock)."""
        with self._lock:
            if self._lock_depth == 0:
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    def sweep(self) -> dict[str, int]:
        """Remove temp files and blobs no name points at (none held by a request in progress);
        returns and logs the counts."""
        removed_temp = removed_blobs = kept = 0
        with self._exclusive():
            for tmp in self.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed_temp += 1
            referenced = {r.sha256 for t in self._tenants() for r in self._read_index(t).values()}
            for blob in (self.root / "blobs").glob("*/*.safetensors"):
                sha = blob.name.removesuffix(".safetensors")
                if sha in referenced:
                    self._doomed_marker(sha).unlink(missing_ok=True)
                    kept += 1
                elif sha in self._pins or not self._remove_blob(sha):  # held by a request somewhere
                    kept += 1
                else:
                    removed_blobs += 1
            for marker in (self.root / "blobs").glob("*/*.doomed"):  # their blob is gone
                if not marker.with_suffix(".safetensors").exists():
                    marker.unlink(missing_ok=True)
        counts = {"removed_blobs": removed_blobs, "removed_temp_files": removed_temp, "kept_blobs": kept}
        level = logging.WARNING if removed_blobs or removed_temp else logging.INFO
        log.log(level, "adapter store %s: removed %d blobs no name points at and %d temp files of interrupted "
                "writes; %d blobs in use", self.root, removed_blobs, removed_temp, kept, extra=counts)
        return counts

    def _sweep_every(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sweep()
            except OSError as exc:  # a transient filesystem problem: try again next time
                log.error("adapter store sweep failed: %s", exc)

    # index ---------------------------------------------------------------------------------------
    def _read_index(self, tenant: str) -> dict[str, AdapterRecord]:
        path = self._index_path(tenant)
        if not path.exists():
            return {}
        raw = json.loads(path.read_text())
        return {name: AdapterRecord(name=name, **fields) for name, fields in raw.items()}

    def _write_index(self, tenant: str, index: dict[str, AdapterRecord]) -> None:
        body = {n: {k: v for k, v in asdict(r).items() if k != "name"} for n, r in sorted(index.items())}
        atomic_write_bytes(self._index_path(tenant), json.dumps(body, indent=1).encode())

    def _tenants(self) -> Iterable[str]:
        return (p.stem for p in (self.root / "tenants").glob("*.json"))

    # queries -------------------------------------------------------------------------------------
    def list(self, tenant: str) -> list[AdapterRecord]:
        with self._lock:
            return sorted(self._read_index(tenant).values(), key=lambda r: r.name)

    def get(self, tenant: str, name: str) -> AdapterRecord:
        with self._lock:
            record = self._read_index(tenant).get(check_name(name))
        if record is None:
            raise NotFound(f"adapter {name!r} does not exist")
        return record

    def find_by_hash(self, tenant: str, sha256: str) -> AdapterRecord | None:
        """The tenant's record for ``sha256``, or None. Other tenants' adapters are invisible."""
        sha256 = check_sha256(sha256)
        with self._lock:
            return next((r for r in self._read_index(tenant).values() if r.sha256 == sha256), None)

    def read(self, sha256: str) -> bytes:
        try:
            return self.blob_path(check_sha256(sha256)).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"adapter {sha256[:12]}… no longer exists (it was deleted)") from None

    @contextlib.contextmanager
    def pinned(self, *sha256s: str | None) -> Iterator[None]:
        """Hold these blobs (None entries are skipped) for the ``with`` block, against deletes from any
        process sharing the folder: deleting their names meanwhile removes the blobs only after the
        block. Raises :class:`NotFound` when one is already gone."""
        held: list[str] = []
        try:
            with self._lock:
                for sha in dict.fromkeys(s for s in sha256s if s):
                    self._hold(check_sha256(sha))
                    held.append(sha)
            yield
        finally:
            with self._lock:
                released = [sha for sha in held if self._release(sha)]
                doomed = [sha for sha in released if sha in self._doomed or self._doomed_marker(sha).exists()]
                self._doomed.difference_update(doomed)
            if doomed:  # their last name went while they were held
                with self._exclusive():
                    for sha in doomed:
                        if sha not in self._pins:
                            self._collect(sha)

    def _hold(self, sha256: str) -> None:
        """Take (or count one more use of) this process's shared flock on the blob. Under ``_lock``."""
        if sha256 in self._pins:
            self._pins[sha256] += 1
            return
        path = self.blob_path(sha256)
        gone = NotFound("the adapter this request names was deleted before the request could use it")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise gone from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a remover holds LOCK_EX only while it unlinks
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # unlinked (and maybe written again) meanwhile
                raise FileNotFoundError
        except FileNotFoundError:
            os.close(fd)
            raise gone from None
        except BaseException:
            os.close(fd)
            raise
        self._pin_fds[sha256] = fd
        self._pins[sha256] = 1

    def _release(self, sha256: str) -> bool:
        """Count one use less; True when it was this process's last (its flock is then released)."""
        self._pins[sha256] -= 1
        if self._pins[sha256] > 0:
            return False
        del self._pins[sha256]
        os.close(self._pin_fds.pop(sha256))
        return True

    def pinned_count(self) -> int:
        """Blobs held by requests in progress (for tests and metrics)."""
        with self._lock:
            return len(self._pins)

    # mutations -----------------------------------------------------------------------------------
    def put(self, tenant: str, name: str, data: bytes, validate: Validator,
            expected_sha256: str | None = None) -> AdapterRecord:
        """Validate and store ``data`` under ``tenant``/``name`` (replacing an earlier one of that name)."""
        sha256, kind = self._checked(name, data, validate, expected_sha256)
        with self._exclusive():
            index = self._read_index(tenant)
            self._check_quota(index, name, len(data))
            blob = self.blob_path(sha256)
            new_blob = not blob.exists()
            self._doomed_marker(sha256).unlink(missing_ok=True)  # named again: no longer to be removed
            if new_blob:
                with _space_errors("an adapter file"):
                    atomic_write_bytes(blob, data)
            record = AdapterRecord(name, sha256, kind, len(data), time.time())
            previous = index.get(name)
            index[name] = record
            try:
                with _space_errors("a tenant index"):
                    self._write_index(tenant, index)
            except BaseException:
                if new_blob:  # no name points at it: do not leave it behind
                    blob.unlink(missing_ok=True)
                raise
            if previous and previous.sha256 != sha256:
                self._collect(previous.sha256)
        return record

    def delete(self, tenant: str, name: str) -> AdapterRecord:
        with self._exclusive():
            index = self._read_index(tenant)
            record = index.pop(check_name(name), None)
            if record is None:
                raise NotFound(f"adapter {name!r} does not exist")
            with _space_errors("a tenant index"):
                self._write_index(tenant, index)
            self._collect(record.sha256)
        return record

    def _collect(self, sha256: str) -> None:
        """Delete a blob that no tenant's name points at any more (later, if a request holds it)."""
        for tenant in self._tenants():
            if any(r.sha256 == sha256 for r in self._read_index(tenant).values()):
                return
        if sha256 in self._pins:
            self._doomed.add(sha256)
            return
        if not self._remove_blob(sha256):  # another process's request holds it: its release removes it
            with contextlib.suppress(OSError):
                self._doomed_marker(sha256).touch()

    def _remove_blob(self, sha256: str) -> bool:
        """Unlink the blob unless a request in some process holds it (its shared flock); True when
        it is gone. Under :meth:`_exclusive`."""
        path = self.blob_path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._doomed_marker(sha256).unlink(missing_ok=True)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            path.unlink(missing_ok=True)
            self._doomed_marker(sha256).unlink(missing_ok=True)
        finally:
            os.close(fd)
        return True

