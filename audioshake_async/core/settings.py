"""Settings of each request the transport makes: timeouts, when a request may be repeated, and
the holder that keeps a credential out of every repr."""

from __future__ import annotations

import enum

import aiohttp
import attrs

__all__ = ["Retry", "Secret", "Timeouts"]


class Retry(enum.Enum):
    """When a request may be repeated."""

    #: Idempotent (GET, DELETE) or harmless to repeat (an upload makes a new asset): retry
    #: connection errors, timeouts, 429 and 5xx.
    ALWAYS = "always"
    #: Non-idempotent and billable (``POST /tasks``): retry only failures that happened before
    #: the request was sent, and 429 (the server refused it unprocessed). After sending, a
    #: failure raises :class:`~audioshake_async.errors.AmbiguousRequestError`.
    BEFORE_SEND = "before_send"


@attrs.frozen
class Timeouts:
    """Timeouts in seconds. ``request`` bounds a whole JSON call; transfers are bounded per read."""

    request: float = 60.0
    connect: float = 15.0
    #: Longest silence allowed while an upload waits for its answer or a download for bytes.
    transfer_read: float = 300.0

    def for_json(self, override: float | None = None) -> aiohttp.ClientTimeout:
        """A complete ClientTimeout for an API call (never a partial one: aiohttp#7274)."""
        total = self.request if override is None else override
        return aiohttp.ClientTimeout(
            total=total, connect=None, sock_connect=self.connect, sock_read=None
        )

    def for_transfer(self) -> aiohttp.ClientTimeout:
        """A ClientTimeout for large bodies: no total cap, but bounded silence."""
        return aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self.connect, sock_read=self.transfer_read
        )


class Secret:
    """Holds a credential; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__
