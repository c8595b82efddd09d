"""A local Music.AI: the API (``/v1``) plus a separate signed storage host, on loopback.

For tests and benchmarks of Music.AI clients, ours and the official ``musicai-sdk`` alike:

- API routes (raw key in ``Authorization``, no ``Bearer``): ``GET /upload``, ``POST /job``,
  ``GET /job/{id}``, ``GET /job/{id}/status``, ``GET /job`` (filters ``status`` and
  ``workflow`` repeatable, ``batchName``, ``page``/``size``; a bare array by default, as the
  reference's example), ``DELETE /job/{id}``, ``GET /workflow``, ``GET /application``; every
  success is ``200``.
- Storage host (another port, so another origin): ``PUT /files/{id}/input`` streams an upload
  to disk in constant memory; ``GET``/``HEAD /files/{id}/{name}`` serve inputs and results with
  ``Range``. URLs are signed and expire like the AudioShake emulator's CDN links
  (:class:`~audioshake_async.emulator.links.LinkSigner`, one signer for PUT and one for GET).
  Requests carrying an API key header are counted: a client must never send it there.
- Jobs go ``QUEUED -> STARTED -> SUCCEEDED | FAILED`` in ``queue_delay + delay`` seconds.
  Results are real files made by the AudioShake emulator's DSP stand-in
  (:mod:`~audioshake_async.emulator.dsp`: vocals = mid channel, accompaniment = side, bass
  = low-pass, ...), WAV in, WAV out, plus plain values (``"bpm"``). ``FAILED`` jobs carry the
  documented ``{code, title, message}``: ``BAD_INPUT`` (nothing uploaded, undecodable input),
  ``TIMEOUT`` (an input URL the emulator will not or cannot fetch), and any code through the
  ``fail_rate``/``fail_code`` knobs. ``copyResultsTo`` outputs are PUT to the given (loopback)
  URL and reported as ``"[custom storage]"``.
- Faults: ``http_fail_rate`` (5xx), a token-bucket ``rate_limit`` and ``rate_limit_burst``
  (429 with ``Retry-After``), ``drop_after_create`` (the next N ``POST /job`` create the job,
  then close the connection unanswered), ``put_failures`` (the next N upload PUTs answer 503
  after reading the body).
- ``tls=True`` serves both hosts over HTTPS with a certificate for ``127.0.0.1`` from a CA made
  at start (``trustme``), because the official SDK only downloads ``https://`` results. Point
  ``REQUESTS_CA_BUNDLE`` at :attr:`MusicAIEmulator.ca_path`, or use
  :meth:`MusicAIEmulator.client_ssl_context` with aiohttp.

Inferred, not documented: the listing direction (``list_order``, oldest first by default: the
reference only says "sorted by creation date"), error bodies (``{code, title, message}``), URL
lifetimes (``link_ttl``, an hour), the ``bpm`` value (tempo of the drums stand-in's onsets).
"""

from __future__ import annotations

from .cli import main
from .config import MusicAIConfig
from .server import MusicAIEmulator
from .workflows import DEFAULT_WORKFLOWS, MusicAIWorkflow

__all__ = ["DEFAULT_WORKFLOWS", "MusicAIConfig", "MusicAIEmulator", "MusicAIWorkflow", "main"]
