"""One root exception for everything shoal raises on purpose.

Each subclass names the state of the thing that went wrong and carries what the caller
needs to act on it: the HTTP status the mirror should answer with and the OCI error code
for the body (as h11's ``error_status_hint`` does). Third-party exceptions are translated
into these at the boundary with ``raise ... from exc`` so that callers above the boundary
only ever catch ``ShoalError``.
"""

from __future__ import annotations

import errno
import re


class ShoalError(Exception):
    """Root of every error shoal raises deliberately."""

    http_status: int = 500
    oci_code: str = "UNKNOWN"

    def __init__(self, message: str, *, detail: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigInvalidError(ShoalError):
    """The configuration file or a flag holds an unknown key or a bad value."""


class NameInvalidError(ShoalError):
    http_status = 400
    oci_code = "NAME_INVALID"


class DigestInvalidError(ShoalError):
    http_status = 400
    oci_code = "DIGEST_INVALID"


class ManifestInvalidError(ShoalError):
    http_status = 502
    oci_code = "MANIFEST_INVALID"


class ManifestUnknownError(ShoalError):
    http_status = 404
    oci_code = "MANIFEST_UNKNOWN"


class BlobUnknownError(ShoalError):
    http_status = 404
    oci_code = "BLOB_UNKNOWN"


class RangeNotSatisfiableError(ShoalError):
    http_status = 416
    oci_code = "RANGE_INVALID"


class UpstreamUnknownError(ShoalError):
    """No upstream registry could be derived for the request, or it is not allowed."""

    http_status = 400
    oci_code = "NAME_UNKNOWN"


class AccessDeniedError(ShoalError):
    http_status = 403
    oci_code = "DENIED"


class UpstreamUnavailableError(ShoalError):
    """The upstream registry could not be reached or answered with a server error."""

    http_status = 502
    oci_code = "UNAVAILABLE"


class DigestMismatchError(ShoalError):
    """Bytes received do not hash to the digest they were asked for."""

    http_status = 502
    oci_code = "DIGEST_INVALID"


class TooManyRequestsError(ShoalError):
    http_status = 429
    oci_code = "TOOMANYREQUESTS"


class UnsupportedError(ShoalError):
    http_status = 405
    oci_code = "UNSUPPORTED"


#: asyncio's words for a listener that could not bind: "error while attempting to bind
#: on address ('::', 65002, 0, 0): address already in use"
_BIND = re.compile(r"bind on address \('([^']*)', (\d+)[^)]*\): (.*)$")


def describe_os_error(exc: OSError) -> str:
    """One line for an error of the machine (a port in use, a file, a directory)."""
    text = exc.strerror or str(exc)
    bind = _BIND.search(text)
    if bind is not None:
        host, port, why = bind.groups()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"cannot listen on {where}: {why}"
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return f"cannot listen: {text}"
    if exc.filename is not None:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {text}"
    return text
