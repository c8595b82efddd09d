"""A local emulator of AudioShake's legacy Jobs API (``groovy``), on its own loopback ports.

Routes (seed 002, reference §6), all behind ``Authorization: Bearer <token>`` (401 otherwise):

- ``POST /upload`` and ``/upload/``: multipart field ``file``, streamed to disk in constant
  memory (the Tasks emulator's :class:`~audioshake_async.emulator.uploads.AssetUploads`);
- ``POST /upload/link`` (and the older ``/upload/audio-link``): ``{"link", "name"?}``; the link
  is fetched when a job runs, from loopback hosts only;
- ``POST /job`` (and ``/job/``): ``{"metadata": {"name", "format", ...}, "assetId",
  "callbackUrl"?}`` -> ``{"job": {...}}`` with status ``queued`` (``initial_status``);
- ``GET /job/{id}`` -> ``{"job": {...}}``; ``outputAssets`` (``[{name: "vocals.wav", id,
  fileType, format, link}]``) once ``completed``; ``statusInfo``/``error`` once failed;
- ``GET /usage`` -> ``{"clientId", "usage": [{"month", "totalJobs", "totalMinutes"}]}``.

Processing is the Tasks emulator's: each job runs as a one-target task through
:class:`~audioshake_async.emulator.processing.Processor`, so outputs are real files made by the
DSP stand-in (:mod:`~audioshake_async.emulator.dsp`) and served by the same signed, expiring
CDN (:mod:`~audioshake_async.emulator.cdn`) on a second port, which counts any request
carrying an ``Authorization`` header (a client leaking its token).

Inferred, not documented [INFER]: error bodies (Fastify's ``{statusCode, error, message}``),
the callback payload (the job in its ``{"job": ...}`` envelope, POSTed on every status change:
``processing``, then ``completed``/``failed``), the ``processing`` transition (half-way through
``delay``), the failure fields (``statusInfo: {code, message}`` and ``error``), ``totalJobs``
(every job created that month). Knobs reproduce the doc variants: ``initial_status``
(``queued``/``created``), ``failure_status`` (``failed``/``error``), ``output_key``
(``outputAssets``/``stemAssets``/``nested`` under ``sourceAsset``) and ``not_found_reads`` (the
brief 404 right after creation). :meth:`LegacyEmulator.script` queues per-route faults
(``"drop"``, ``"drop_after"``, a status such as ``"503"``) consumed in order.
"""

from __future__ import annotations

from .config import LegacyEmulatorConfig
from .server import LegacyEmulator

__all__ = ["LegacyEmulator", "LegacyEmulatorConfig"]
