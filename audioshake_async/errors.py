"""The exception tree: every error the package raises derives from :class:`AudioShakeError`.

Messages and reprs carry the method, a URL without its query string, the status and the
server's ``error``/``message``; never a header, so never the API key or a link signature.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AmbiguousRequestError",
    "AudioShakeError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "InsufficientCreditsError",
    "JournalBusyError",
    "JournalError",
    "LeaseLostError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseParseError",
    "ServerError",
    "StorageError",
    "StorageNotFoundError",
    "TaskFailedError",
    "TaskTimeoutError",
    "UnprocessableEntityError",
    "ValidationError",
]


class AudioShakeError(Exception):
    """Base class of every error raised by audioshake-async."""


class ConfigurationError(AudioShakeError):
    """The client is misconfigured (no API key, bad base URL, ...)."""


class ValidationError(AudioShakeError, ValueError):
    """Bad input detected locally, before any request was sent."""


class APIError(AudioShakeError):
    """The API answered with an error status.

    ``status`` is the HTTP status, ``error`` and ``message`` come from the documented
    ``{statusCode, error, message}`` body (or the raw text when the body is not JSON).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error: str | None = None,
        method: str = "",
        url: str = "",
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.error = error
        self.method = method
        self.url = url
        self.body = body
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        label = f"{self.error}: " if self.error else ""
        return f"{self.status} {label}{self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"

    def __reduce__(self) -> Any:
        return (
            _rebuild_api_error,
            (type(self), self.status, self.message, self.error, self.method, self.url),
        )


def _rebuild_api_error(
    cls: type[APIError], status: int, message: str, error: str | None, method: str, url: str
) -> APIError:
    return cls(status, message, error=error, method=method, url=url)


class BadRequestError(APIError):
    """400: the request was rejected (validation on the server side)."""


class InsufficientCreditsError(BadRequestError):
    """400 "Insufficient credits": the account cannot pay for uploads or processing."""


class AuthenticationError(APIError):
    """401: the API key is missing, invalid or revoked."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (e.g. a gated model), or a download link expired."""


class NotFoundError(APIError):
    """404: no such task or asset (assets expire after 72 hours)."""


class PayloadTooLargeError(APIError):
    """413: the upload exceeds the server's limit."""


class UnprocessableEntityError(APIError):
    """422: the request was well-formed but could not be processed."""


class RateLimitError(APIError):
    """429: too many requests, after the retries were exhausted."""


class ServerError(APIError):
    """5xx: the service failed, after the retries were exhausted."""


class ResponseParseError(AudioShakeError):
    """A 2xx response whose body is not the documented shape."""


class APIConnectionError(AudioShakeError):
    """The request could not be completed: connection refused, reset or dropped."""

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        self.method = method
        self.url = url
        super().__init__(f"{message} ({method} {url})" if method else message)


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class AmbiguousRequestError(APIConnectionError):
    """A non-idempotent request (``POST /tasks``) may or may not have taken effect.

    The request was sent, then the connection failed or timed out before an answer arrived.
    Retrying blindly could create (and bill) the task twice; look it up first, e.g. by the
    ``metadata`` it carried, as the batch engine does.
    """


class DownloadError(AudioShakeError):
    """An output could not be downloaded after every retry (and link refresh)."""


class StorageError(AudioShakeError):
    """An object store (S3 or compatible) refused or failed a request about an input or output."""


class StorageNotFoundError(StorageError):
    """The object (or bucket) does not exist in the store."""


class JournalError(AudioShakeError):
    """The batch journal cannot open or record a step (disk full, database gone): the batch stops.

    Nothing is lost: what the journal holds is consistent, and a re-run resumes from it.
    ``step`` names the journal operation that failed (``record_output``, ``finish``, ``open``...)
    when known, ``source`` the input it was for, ``path`` the journal.
    """

    def __init__(
        self, message: str, *, step: str = "", source: str | None = None, path: str = ""
    ) -> None:
        self.step = step
        self.source = source
        self.path = path
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (
            _rebuild_journal_error,
            (type(self), self.args[0], self.step, self.source, self.path),
        )


def _rebuild_journal_error(
    cls: type[JournalError], message: str, step: str, source: str | None, path: str
) -> JournalError:
    return cls(message, step=step, source=source, path=path)


class LeaseLostError(JournalError):
    """A shared journal's lease on an item was taken over or lapsed: this worker must stop.

    Another worker owns the item now; the journal refused this worker's write (fencing).
    """


class JournalBusyError(JournalError):
    """Another process holds the journal: running beside it could bill the same work twice.

    ``pid`` and ``host`` name the holder as it recorded itself (None when it had not yet), the
    holder's lock is released by the operating system when it exits, however it exits.
    """

    def __init__(
        self, path: str, *, pid: int | None = None, host: str | None = None, since: str = ""
    ) -> None:
        self.pid = pid
        self.host = host
        holder = f"pid {pid if pid is not None else '?'} on host {host or '?'}"
        when = f" since {since}" if since else ""
        super().__init__(f"journal in use by {holder}{when}: {path}", step="open", path=path)

    def __reduce__(self) -> Any:
        return (_rebuild_busy_error, (self.path, self.pid, self.host, self.args[0]))


def _rebuild_busy_error(
    path: str, pid: int | None, host: str | None, message: str
) -> JournalBusyError:
    error = JournalBusyError(path, pid=pid, host=host)
    error.args = (message,)
    return error


class TaskFailedError(AudioShakeError):
    """Raised by ``tasks.wait(..., raise_on_error=True)`` when a target ended in error."""

    def __init__(self, task: Any) -> None:
        self.task = task
        failed = ", ".join(
            f"{t.model}: {t.error.message if t.error and t.error.message else t.status}"
            for t in task.failed_targets
        )
        super().__init__(f"task {task.id} has failed targets: {failed}")


class TaskTimeoutError(AudioShakeError, TimeoutError):
    """A task was not done before the wait's deadline; ``task`` is the last snapshot."""

    def __init__(self, task_id: str, timeout: float, task: Any = None) -> None:
        self.task_id = task_id
        self.task = task
        super().__init__(f"task {task_id} not done after {timeout:g} s")
