"""One exception type per kind of failure, each carrying its HTTP status and error code.

The API's error middleware turns any of these into `{"error": code, "message": ...}`; the CLI
prints the message. Messages are meant for the caller: they name the problem, never a secret.
"""

from __future__ import annotations


class DnsapiError(Exception):
    """Base class: `status` is the HTTP status, `code` the machine-readable error code."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DnsapiError):
    """The request itself is wrong: a bad name, value, TTL or body."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(DnsapiError):
    status = 401
    code = "unauthorized"


class Forbidden(DnsapiError):
    status = 403
    code = "forbidden"

    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code


class TooManyRecords(DnsapiError):
    """A zone, or the token's share of it, already holds the configured maximum of records."""

    status = 409
    code = "too_many_records"

    def __init__(self, message: str, code: str = "too_many_records") -> None:
        super().__init__(message)
        self.code = code


class NameConflict(DnsapiError):
    """The operator's zone cannot hold a TXT record at the name (CNAME there, DNAME or delegation
    above); nothing was stored."""

    status = 409
    code = "name_conflict"


class TooManyRequests(DnsapiError):
    """The token's rate limit is exhausted; `retry_after` says for how long."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, code: str = "rate_limited") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class Busy(DnsapiError):
    """dnsapi's own capacity for something is taken (e.g. waits for DNS); retry later."""

    status = 503
    code = "too_many_waits"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLarge(DnsapiError):
    status = 413
    code = "body_too_large"


class RequestTimeout(DnsapiError):
    """The request's body did not arrive in time; nothing was changed."""

    status = 408
    code = "request_timeout"


class ZoneError(DnsapiError):
    """The zone file could not be read, parsed or written; Vault may already hold the change."""

    status = 500
    code = "zone_error"


class VaultUnavailable(DnsapiError):
    """Vault could not be reached or refused our credentials; nothing was acknowledged."""

    status = 503
    code = "vault_unavailable"


class ShuttingDown(DnsapiError):
    """dnsapi is stopping: the request arrived too late, or its body had not fully arrived; nothing
    was changed."""

    status = 503
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("dnsapi is shutting down; nothing was changed, retry shortly")


class PropagationTimeout(DnsapiError):
    status = 504
    code = "propagation_timeout"


class ConfigError(Exception):
    """The configuration is wrong; the message starts with the offending key."""
