"""The operator's side of the preheat job API: ``shoal preheat`` and the webhook's
controller create, follow and cancel jobs at the roots with it.

Requests are signed with the operator credential (``PreheatConfig.secret``) and sent
over TLS checked against the cluster's CA (``ControlConfig.caFile``), as agents call the
roots. A job lives on the root that took it: ``create`` asks the roots in order until
one answers, and ``get``/``cancel`` ask each root until one knows the job.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiohttp
import msgspec

from shoal.config import ControlConfig, PreheatConfig
from shoal.control.preheat import JobList, JobSpec, JobState
from shoal.control.signed import SignedSession
from shoal.errors import (
    AccessDeniedError,
    ConfigInvalidError,
    ShoalError,
    TooManyRequestsError,
    UpstreamUnavailableError,
)

T = TypeVar("T")


class JobRefusedError(ShoalError):
    """A root answered the request with an error (its message says why)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class JobNotFoundError(JobRefusedError):
    pass


class PreheatClient:
    def __init__(
        self,
        roots: list[str] | tuple[str, ...],
        secret: bytes,
        *,
        control: ControlConfig | None = None,
        timeout: float = 60.0,
    ) -> None:
        if not roots:
            raise ShoalError("no roots to ask (P2PConfig.roots or --root)")
        self.roots = list(roots)
        self._signed = SignedSession(
            secret, control, timeout=timeout, connect_timeout=5.0, per_root=4
        )
        self.scheme = self._signed.scheme

    def __repr__(self) -> str:
        return f"<PreheatClient {self.scheme} {self.roots}>"

    async def __aenter__(self) -> PreheatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._signed.close()

    async def _call(self, root: str, method: str, path: str, body: bytes, kind: type[T]) -> T:
        try:
            status, payload = await self._signed.call(root, method, path, body or None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailableError(
                f"root {root} unreachable: {type(exc).__name__} {exc}".strip()
            ) from exc
        if status in (200, 201):
            try:
                return msgspec.json.decode(payload, type=kind)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise UpstreamUnavailableError(f"root {root} sent an invalid answer") from exc
        message = _error_message(payload) or f"HTTP {status}"
        if status == 401:
            message = (
                f"root {root} refuses the signature: the operator credential differs "
                "(PreheatConfig.secret or secretFile)"
            )
        error = {404: JobNotFoundError, 403: AccessDeniedError, 429: TooManyRequestsError}
        kind_of = error.get(status)
        if kind_of is JobNotFoundError:
            raise JobNotFoundError(message, status)
        if kind_of is not None:
            raise kind_of(message)
        raise JobRefusedError(message, status)

    async def create(self, spec: JobSpec) -> JobState:
        body = msgspec.json.encode(spec)
        last: ShoalError | None = None
        for root in self.roots:
            try:
                return await self._call(root, "POST", "/preheat/v1/jobs", body, JobState)
            except UpstreamUnavailableError as exc:
                last = exc  # the next root may answer
        assert last is not None
        raise last

    async def get(self, job_id: str) -> JobState:
        return await self._each(job_id, "GET")

    async def cancel(self, job_id: str) -> JobState:
        return await self._each(job_id, "DELETE")

    async def _each(self, job_id: str, method: str) -> JobState:
        last: ShoalError = JobNotFoundError(f"no root knows preheat job {job_id}", 404)
        for root in self.roots:
            try:
                return await self._call(root, method, f"/preheat/v1/jobs/{job_id}", b"", JobState)
            except (JobNotFoundError, UpstreamUnavailableError) as exc:
                if isinstance(exc, UpstreamUnavailableError):
                    last = exc
        raise last

    async def list(self) -> list[JobState]:
        jobs: list[JobState] = []
        for root in self.roots:
            got = await self._call(root, "GET", "/preheat/v1/jobs", b"", JobList)
            jobs += got.jobs
        return jobs


def operator_secret(config: PreheatConfig) -> bytes | None:
    """The operator credential (``secretFile`` wins); None: the job API is off."""
    if config.secret_file:
        try:
            value = Path(config.secret_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigInvalidError(
                f"config: PreheatConfig.secretFile: cannot read {config.secret_file}: "
                f"{exc.strerror}"
            ) from exc
    else:
        value = config.secret.encode()
    if not value:
        return None
    if len(value) < 16:
        raise ConfigInvalidError("config: PreheatConfig.secret (or secretFile) needs 16 bytes")
    return value


def _error_message(payload: bytes) -> str:
    try:
        doc = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload[:200].decode(errors="replace")
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", ""))[:300]
    return ""
