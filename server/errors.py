"""Errors shared by every layer; each transport maps them to status codes in one place.

Raise these (never bare ``ValueError``) for anything a client caused or can act on, with a message
that says what is wrong and, where possible, what to do instead.
"""

from __future__ import annotations


class SplitASRError(Exception):
    """Base class. ``http_status`` is the REST mapping; the gRPC interceptor maps by class.

    ``exit_code`` is the command line's: 2 when the command line or the settings are wrong (fix the
    invocation), 1 when the work failed (bad audio or adapter files, missing backbones, ...).
    """

    http_status = 500
    code = "internal_error"
    exit_code = 1


class InvalidInput(SplitASRError):
    """The request itself is malformed (bad field, bad value).

    ``param``: the request field at fault, when there is one (REST reports it as the error's ``param``).
    """

    http_status = 400
    code = "invalid_request"
    exit_code = 2

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param


class UnsupportedField(InvalidInput):
    """A request field (or a value of it) that this server does not implement: never silently ignored."""

    code = "unsupported_field"


class BadAudio(InvalidInput):
    """The audio could not be decoded, is empty, or is outside the accepted limits."""

    code = "invalid_audio"
    exit_code = 1


class InvalidAdapter(InvalidInput):
    """An adapter file failed validation (format, shapes, values, limits, backbone mismatch)."""

    code = "invalid_adapter"
    exit_code = 1


class UsageError(InvalidInput):
    """A command line that cannot work as given (missing or conflicting options): exit code 2."""


class TooLarge(InvalidInput):
    """An upload exceeds a configured size limit."""

    http_status = 413
    code = "payload_too_large"
    exit_code = 1


class NotFound(SplitASRError):
    """A named model, adapter or resource does not exist (for this tenant)."""

    http_status = 404
    code = "not_found"


class PermissionDenied(SplitASRError):
    http_status = 403
    code = "permission_denied"


class Unauthenticated(SplitASRError):
    http_status = 401
    code = "unauthenticated"


class Overloaded(SplitASRError):
    """The server is at its configured concurrency or queue limit; retry later."""

    http_status = 429
    code = "overloaded"


class ServerBusy(Overloaded):
    """The whole server is at capacity (its decode queue or its stream slots are full), as opposed to a
    tenant's quota: gRPC answers UNAVAILABLE with a ``google.rpc.RetryInfo`` of ``retry_after_s``
    (quotas stay RESOURCE_EXHAUSTED); REST answers 429 like any overload."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """A tenant sent more requests than its rate limit allows; ``retry_after_s`` says when to retry."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DecodeTimeout(SplitASRError):
    """A request decoded for longer than its limit (``SPLITASR_DECODE_TIME_LIMIT_RTF``); it was stopped."""

    http_status = 504
    code = "decode_timeout"


class StorageFull(SplitASRError):
    """The adapter store's disk is full (or the file size limit of the process was hit)."""

    http_status = 507
    code = "insufficient_storage"


class NotReady(SplitASRError):
    """The backbone is still loading (or failed to load)."""

    http_status = 503
    code = "not_ready"


class StoreUnavailable(NotReady):
    """The adapter store (an S3 server) could not be reached or refused the request; retry later."""

    code = "store_unavailable"


class StoredAdapterCorrupt(SplitASRError):
    """A stored adapter's bytes no longer match the sha256 they are stored under: it is not loaded."""

    http_status = 500
    code = "adapter_corrupt"


class BackboneUnavailable(SplitASRError):
    """A backbone source is missing, tampered with or cannot be converted."""

    http_status = 500
    code = "backbone_unavailable"
