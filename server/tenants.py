"""Tenants and API keys: a bearer token maps to a tenant; each tenant sees only its own adapters.

Keys come from a file (``SPLITASR_API_KEYS_FILE``: one ``TOKEN TENANT`` pair per line, ``#`` comments,
UTF-8 with or without a byte-order mark) and/or the environment (``SPLITASR_API_KEYS="token1:tenantA,
token2:tenantB"``; spaces around tokens and tenants are ignored). With no keys at all, the server runs
as one open tenant named ``default``; it says so in its log and refuses to bind a non-loopback address
unless told it is insecure.

Loading refuses, naming the file and line (or the variable and item), anything that would make keys
mean something other than what the operator wrote: a malformed line, a token shorter than 16
characters, the placeholder token of ``.env.example`` (or any token starting ``replace-with``), a
token given twice (even for the same tenant), and two tenant names that differ only by case (they
name files, which merge on a case-insensitive volume).

Failed authentications are counted per client address (:class:`AuthFailureLimiter`): past a limit the
address gets 429 / RESOURCE_EXHAUSTED for a while, before its key is even looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInput, RateLimited, Unauthenticated
from .storage.store import TENANT_PATTERN

log = logging.getLogger(__name__)

OPEN_TENANT = "default"
MIN_TOKEN_CHARS = 16
# .env.example's value, and the prefix of every placeholder the docs use
EXAMPLE_TOKEN = "replace-with-a-long-random-token"
PLACEHOLDER_PREFIX = "replace-with"
INLINE_SOURCE = "SPLITASR_API_KEYS"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _check_token(token: str, where: str) -> None:
    if token.lower().startswith(PLACEHOLDER_PREFIX):
        raise InvalidInput(f"{where}: the API key is a placeholder ({token[:len(PLACEHOLDER_PREFIX)]}...), as in "
                           ".env.example; set a long random token instead, e.g. `openssl rand -hex 24`")
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidInput(f"{where}: API keys must have at least {MIN_TOKEN_CHARS} characters")


def _file_pairs(file: Path) -> list[tuple[str, str, str, str]]:
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"SPLITASR_API_KEYS_FILE: cannot read {file}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark would otherwise stick to the first token
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{file}: not UTF-8 text (byte {exc.start})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InvalidInput(f"{file}:{number}: expected 'TOKEN TENANT' (two fields), found {len(parts)}")
        pairs.append((parts[0], parts[1], f"{file}:{number}", str(file)))
    return pairs


def _inline_pairs(inline: str) -> list[tuple[str, str, str, str]]:
    pairs = []
    for number, item in enumerate(inline.split(","), 1):
        if not item.strip():
            continue
        where = f"{INLINE_SOURCE} (item {number})"
        token, colon, tenant = item.partition(":")
        if not colon:
            raise InvalidInput(f"{where}: expected 'token:tenant'")
        pairs.append((token.strip(), tenant.strip(), where, INLINE_SOURCE))
    return pairs


@dataclass(frozen=True)
class ApiKeys:
    """Token digests -> tenant. Tokens are compared in constant time and never kept in clear.

    ``sources`` says where the keys came from (for the start-up log): ``{"<file>": 3, "SPLITASR_API_KEYS": 1}``.
    """

    by_digest: dict[bytes, str]
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return not self.by_digest

    @property
    def tenants(self) -> list[str]:
        return sorted(set(self.by_digest.values()))

    def describe(self) -> str:
        """One line for the start-up log: where the keys came from and how many tenants they name."""
        if self.open:
            return f"no API keys (neither SPLITASR_API_KEYS_FILE nor {INLINE_SOURCE} is set): one open tenant"
        where = ", ".join(f"{n} from {source}" for source, n in self.sources.items())
        return f"{len(self.by_digest)} API keys for {len(self.tenants)} tenants ({where})"

    @classmethod
    def load(cls, file: Path | None = None, inline: str | None = None) -> ApiKeys:
        """Read and check the keys; any problem is an :class:`InvalidInput` naming the file:line or item."""

        pairs = (_file_pairs(file) if file is not None else []) + _inline_pairs(inline or "")
        by_digest: dict[bytes, str] = {}
        seen_at: dict[bytes, str] = {}
        by_folded: dict[str, tuple[str, str]] = {}
        sources: dict[str, int] = {}
        for token, tenant, where, source in pairs:
            _check_token(token, where)
            if not TENANT_PATTERN.fullmatch(tenant):
                raise InvalidInput(f"{where}: invalid tenant name {tenant[:80]!r}: use 1-64 characters from "
                                   "A-Z a-z 0-9 . _ -, starting with a letter or digit")
            digest = _digest(token)
            if digest in seen_at:
                raise InvalidInput(f"{where}: this API key is also given at {seen_at[digest]}; "
                                   "each key must appear once and name one tenant")
            other, other_where = by_folded.setdefault(tenant.casefold(), (tenant, where))
            if other != tenant:
                raise InvalidInput(f"{where}: tenant {tenant!r} differs from tenant {other!r} ({other_where}) only "
                                   "by case; tenant names are told apart case-insensitively: use one spelling")
            seen_at[digest] = where
            by_digest[digest] = tenant
            sources[source] = sources.get(source, 0) + 1
        return cls(by_digest, sources)

    def authenticate(self, authorization: str | None) -> str:
        """Tenant for an ``Authorization: Bearer <token>`` value (or the bare token)."""
        if self.open:
            return OPEN_TENANT
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else authorization.strip()
        digest = _digest(token)
        tenant = None
        for known, name in self.by_digest.items():  # constant time per candidate
            if hmac.compare_digest(known, digest):
                tenant = name
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant


class AuthBlocked(RateLimited):
    """A client address failed authentication too often; it is refused for a while."""

    code = "too_many_failed_authentications"


class AuthFailureLimiter:
    """Failed authentications per client address: more than ``per_minute`` within a minute block the
    address for ``block_s`` seconds. A blocked address gets :class:`AuthBlocked` (429 /
    RESOURCE_EXHAUSTED with ``Retry-After``) for every request, before its key is looked at, so it
    cannot keep guessing. ``per_minute=0`` turns this off.

    Shared by REST and gRPC (it lives on the engine). At most ``max_addresses`` addresses are tracked
    (least recently failing dropped first), so spoofed or rotating addresses cannot exhaust memory.
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, block_s: float, *, max_addresses: int = 100_000, clock=time.monotonic):
        self.per_minute = per_minute
        self.block_s = block_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def authenticate(self, keys: ApiKeys, authorization: str | None, address: str, transport: str) -> str:
        """``keys.authenticate(authorization)`` for a request from ``address``, counting failures."""
        self.check(address, transport)
        try:
            return keys.authenticate(authorization)
        except Unauthenticated:
            self.failed(address, transport)
            raise

    def check(self, address: str, transport: str = "rest") -> None:
        """Raise :class:`AuthBlocked` while ``address`` is blocked."""
        if not self.enabled:
            return
        with self._lock:
            until = self._blocked_until.get(address)
            if until is None:
                return
            wait = until - self._clock()
            if wait <= 0:
                del self._blocked_until[address]
                return
        from .observability import observe_auth_failure

        observe_auth_failure(transport, blocked=True)
        raise AuthBlocked(f"too many failed authentications from this address; retry in {wait:.0f} s",
                          retry_after_s=wait)

    def failed(self, address: str, transport: str = "rest") -> None:
        """Count one failed authentication from ``address``; block it past the limit."""
        from .observability import observe_auth_failure

        observe_auth_failure(transport, blocked=False)
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            times = self._failures.pop(address, None) or deque(maxlen=self.per_minute + 1)
            times.append(now)
            while times and now - times[0] > self.WINDOW_S:
                times.popleft()
            self._failures[address] = times
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
            if len(times) <= self.per_minute:
                return
            if len(self._blocked_until) >= self.max_addresses:  # drop expired blocks first
                self._blocked_until = {a: t for a, t in self._blocked_until.items() if t > now}
            self._blocked_until[address] = now + self.block_s
            del self._failures[address]
        log.warning("blocking client %s for %g s: more than %d failed authentications within a minute (%s)",
                    address, self.block_s, self.per_minute, transport,
                    extra={"client": address, "transport": transport})


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """Per-tenant token buckets: ``burst`` requests at once, refilled at ``per_minute`` a minute.

    One limiter is shared by REST and gRPC (it lives on the engine), so a tenant's budget covers both.
    ``per_minute=0`` turns limiting off.
    """

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate_per_s = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def check(self, tenant: str) -> None:
        """Take one request from ``tenant``'s bucket, or raise :class:`RateLimited`."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(tenant, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[tenant] = (tokens, now)
                wait = (1.0 - tokens) / self.rate_per_s
                raise RateLimited(f"rate limit exceeded: {self.rate_per_s * 60:g} requests per minute per tenant "
                                  f"(bursts of {self.burst:g}); retry in {wait:.1f} s", retry_after_s=wait)
            self._buckets[tenant] = (tokens - 1.0, now)
