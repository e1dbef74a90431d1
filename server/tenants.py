"""Tenants and API keys: a bearer token maps to a tenant; each tenant sees only its own adapters.

Keys come from a file (``SPLITASR_API_KEYS_FILE``: one ``TOKEN TENANT`` pair per line, ``#`` comments)
and/or the environment (``SPLITASR_API_KEYS="token1:tenantA,token2:tenantB"``). With no keys at all,
the server runs as one open tenant named ``default``; it says so in its log and refuses to bind a
non-loopback address unless told it is insecure.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, RateLimited, Unauthenticated

OPEN_TENANT = "default"
MIN_TOKEN_CHARS = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """Token digests -> tenant. Tokens are compared in constant time and never kept in clear."""

    by_digest: dict[bytes, str]

    @property
    def open(self) -> bool:
        return not self.by_digest

    @classmethod
    def load(cls, file: Path | None = None, inline: str | None = None) -> ApiKeys:
        pairs: list[tuple[str, str, str]] = []
        if file is not None:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError as exc:
                raise InvalidInput(f"SPLITASR_API_KEYS_FILE: cannot read {file}: {exc.strerror}") from exc
            for number, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    parts = line.split()
                    if len(parts) != 2:
                        raise InvalidInput(f"{file}:{number}: expected 'TOKEN TENANT'")
                    pairs.append((parts[0], parts[1], f"{file}:{number}"))
        for item in filter(None, (inline or "").split(",")):
            token, _, tenant = item.strip().partition(":")
            pairs.append((token, tenant, "SPLITASR_API_KEYS"))
        by_digest: dict[bytes, str] = {}
        from .engine.store import TENANT_PATTERN

        for token, tenant, where in pairs:
            if len(token) < MIN_TOKEN_CHARS:
                raise InvalidInput(f"{where}: API keys must have at least {MIN_TOKEN_CHARS} characters")
            if not TENANT_PATTERN.fullmatch(tenant):
                raise InvalidInput(f"{where}: invalid tenant name {tenant!r}")
            by_digest[_digest(token)] = tenant
        return cls(by_digest)

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
