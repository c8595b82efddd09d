"""Signed, expiring links and the S3-like answers of the hosts that check them.

Links look like ``http://127.0.0.1:<port>/files/<file-id>/<name>.<format>?expires=<unix>&sig=<hex>``.
The signature is an HMAC-SHA256 over the file id, file name, expiry and a *generation*
counter, keyed with a per-emulator random secret. Bumping the generation
(:meth:`LinkSigner.expire_all`) invalidates every link handed out so far, which is how tests
exercise "link expired, re-fetch the task" without waiting an hour.

Errors are S3-like XML (``<Error><Code>AccessDenied</Code>...``) since the real links are
presigned object-store URLs [INFER]; clients should not expect the API's JSON error body here.
Both the AudioShake CDN (:mod:`.cdn`) and the Music.AI storage host use these pieces.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

#: Request headers that must never reach a CDN: their presence means a client leaked its key.
KEY_HEADERS = ("x-api-key", "authorization")


class LinkSigner:
    """Makes and checks signed, expiring links."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.generation = 0

    def _digest(self, file_id: str, filename: str, expires: int, generation: int) -> str:
        message = f"{generation}\n{file_id}\n{filename}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, file_id: str, filename: str, expires: int) -> str:
        """Return the full link for ``filename`` of ``file_id`` valid until ``expires``."""
        sig = self._digest(file_id, filename, expires, self.generation)
        return f"{base_url}/files/{file_id}/{quote(filename)}?expires={expires}&sig={sig}"

    def check(self, file_id: str, filename: str, expires: str, sig: str, now: float) -> str | None:
        """``None`` when the link is valid, else why it is refused."""
        if not expires or not sig:
            return "Query-string authentication requires the expires and sig parameters"
        try:
            expiry = int(expires)
        except ValueError:
            return "Invalid expires parameter"
        expected = self._digest(file_id, filename, expiry, self.generation)
        if not hmac.compare_digest(expected, sig):
            return "The request signature we calculated does not match the signature you provided"
        if now >= expiry:
            return "Request has expired"
        return None

    def expire_all(self) -> None:
        """Invalidate every link issued so far."""
        self.generation += 1


def s3_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style XML error response."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")
