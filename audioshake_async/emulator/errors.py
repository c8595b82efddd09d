"""Fastify-style error bodies: ``{"statusCode", "error", "message"}``.

The triple is documented for ``400 Insufficient credits`` and ``404 Cannot find asset``; for
every other status the emulator uses the same envelope ([INFER]: it is Fastify's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

#: Fastify's wording where Python's phrase differs (and changes between versions).
_REASONS = {413: "Payload Too Large", 422: "Unprocessable Entity"}


def reason(status: int) -> str:
    """The standard reason phrase of ``status`` (``"Too Many Requests"``...)."""
    if status in _REASONS:
        return _REASONS[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON error envelope."""
    return {"statusCode": status, "error": reason(status), "message": message}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON error response with the envelope."""
    return web.json_response(error_body(status, message), status=status, headers=headers)


class ApiError(Exception):
    """Raised by handlers and validators; the middleware turns it into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        #: Close the connection after answering (e.g. 413 with a body still arriving).
        self.close = close

    def response(self) -> web.Response:
        """The response this error stands for."""
        resp = error_response(self.status, self.message, self.headers)
        if self.close:
            resp.force_close()
        return resp
