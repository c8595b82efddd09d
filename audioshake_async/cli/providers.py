"""Opening each service for a run: credentials, emulators, checks before any upload, webhooks.

The CLI is the composition root: only here do a service client, its batch provider and an
emulator meet. Each ``open_*`` yields an :class:`OpenProvider`, with every check that costs no
upload done first (a refused key, an unknown model or workflow: exit 2 before any billing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

import anyio
import attrs

from .. import errors
from ..batch import BatchProvider
from ..core.download import DownloadLimits
from ..core.http import DEFAULT_RATE_LIMIT
from ..legacy import (
    DEFAULT_LEGACY_BASE_URL,
    ENV_LEGACY_BASE_URL,
    ENV_LEGACY_TOKEN,
    LegacyClient,
    LegacyProvider,
    check_legacy_targets,
)
from ..legacy.client import deprecation_acknowledged
from ..models import Target
from ..musicai import DEFAULT_BASE_URL as MUSICAI_BASE_URL
from ..musicai import ENV_API_KEY as MUSICAI_API_KEY
from ..musicai import ENV_BASE_URL as MUSICAI_BASE_URL_ENV
from ..musicai import MusicAI, MusicAIProvider
from ..tasks import ENV_API_KEY, ENV_BASE_URL, AudioShake, WebhookReceiver
from ..tasks.resources import WebhooksResource
from .parser import UsageError, check_against_catalog

__all__ = [
    "JOURNAL_NAME",
    "OpenProvider",
    "emulator_missing",
    "open_provider",
    "serve_webhooks",
    "tasks_api",
]

#: The journal's file name inside the output directory when ``--journal`` is not given.
JOURNAL_NAME = ".audioshake-journal.sqlite"


@attrs.frozen
class OpenProvider:
    """A provider ready for a run, and the webhook registration of its service, if it has one."""

    provider: BatchProvider
    webhooks: WebhooksResource | None = None


def client_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The transport settings every client takes from the command line (bounds, http opt-in)."""
    settings: dict[str, Any] = {"allow_insecure_http": getattr(args, "allow_insecure_http", False)}
    if getattr(args, "request_timeout", None):
        settings["timeout"] = args.request_timeout
    limits = {
        name: getattr(args, name)
        for name in ("max_bytes", "low_speed_limit", "low_speed_time")
        if getattr(args, name, None) is not None
    }
    if limits:
        try:
            settings["download_limits"] = DownloadLimits(**limits)
        except errors.ConfigurationError as exc:
            raise UsageError(str(exc)) from None
    return settings


def emulator_missing(exc: ImportError) -> UsageError:
    """The usage error for ``--emulator`` without the ``[emulator]`` extra installed."""
    return UsageError(
        f"the emulator needs extra packages: pip install 'audioshake-async[emulator]' ({exc})"
    )


def open_provider(
    args: argparse.Namespace, targets: Sequence[Target]
) -> contextlib.AbstractAsyncContextManager[OpenProvider]:
    """The provider named by ``--provider``/``--api``, checked before any upload."""
    if args.provider == "legacy":
        return _open_legacy(args, targets)
    if args.provider == "musicai":
        return _open_musicai(args, targets)
    return _open_tasks(args, targets)


@contextlib.asynccontextmanager
async def tasks_api(
    args: argparse.Namespace, *, delay: float = 0.5, rate_limit: float | None = DEFAULT_RATE_LIMIT
) -> AsyncIterator[AudioShake]:
    """A Tasks API client: the embedded emulator's, or the configured service's."""
    if args.emulator:
        try:
            from ..emulator import Emulator
        except ImportError as exc:
            raise emulator_missing(exc) from None
        async with (
            Emulator(delay=delay) as emulator,
            AudioShake(
                emulator.api_key, emulator.base_url, rate_limit=rate_limit, **client_settings(args)
            ) as client,
        ):
            yield client
        return
    key = args.api_key or os.environ.get(ENV_API_KEY)
    if not key:
        raise UsageError(f"no API key: set {ENV_API_KEY}, pass --api-key, or use --emulator")
    base_url = args.base_url or os.environ.get(ENV_BASE_URL) or None
    async with AudioShake(key, base_url, rate_limit=rate_limit, **client_settings(args)) as client:
        yield client


@contextlib.asynccontextmanager
async def _open_tasks(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[OpenProvider]:
    """The Tasks API (or its emulator), with the targets checked against ``GET /models``."""
    async with tasks_api(args, delay=args.emulator_delay, rate_limit=args.rate_limit) as client:
        try:
            catalog = await client.models.list()
        except errors.AuthenticationError:
            raise UsageError("the API key was refused (401)") from None
        check_against_catalog(targets, catalog)
        yield OpenProvider(client.batch_provider(), client.webhooks)


@contextlib.asynccontextmanager
async def serve_webhooks(
    args: argparse.Namespace, registrar: WebhooksResource | None, err: TextIO
) -> AsyncIterator[WebhookReceiver | None]:
    """With --webhook-listen: serve a receiver and register it for the run (removed after)."""
    if not args.webhook_listen:
        if args.webhook_url or args.webhook_no_register:
            raise UsageError("--webhook-url and --webhook-no-register need --webhook-listen")
        yield None
        return
    if registrar is None:
        raise UsageError("webhooks are available with the Tasks API only")
    host, _, port_text = args.webhook_listen.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--webhook-listen takes HOST:PORT, got {args.webhook_listen!r}")
    if not args.webhook_no_register and not args.webhook_url:
        raise UsageError("--webhook-listen needs --webhook-url (or --webhook-no-register)")
    receiver = WebhookReceiver()
    async with receiver.serve(host.strip("[]"), int(port_text)) as local_url:
        public = receiver.url_for(args.webhook_url or local_url)
        if args.webhook_no_register:
            print(
                f"set this webhook URL in the AudioShake dashboard (Settings > Webhook URL): "
                f"{public}",
                file=err,
            )
            yield receiver
            return
        hook = await registrar.register(public)
        try:
            yield receiver
        finally:
            # Removed on every exit, Ctrl-C included: a stale registration would keep
            # receiving deliveries for a receiver that is gone.
            with anyio.CancelScope(shield=True):
                try:
                    await registrar.delete(hook.id)
                except errors.AudioShakeError as exc:
                    print(f"audioshake-async: could not remove webhook {hook.id}: {exc}", file=err)


# --------------------------------------------------------------------------- legacy Jobs API


def _ledger_path(args: argparse.Namespace) -> pathlib.Path | None:
    # Next to the engine's journal, so both resume together; none without a journal.
    if args.no_journal:
        return None
    journal = args.journal or os.path.join(args.out, JOURNAL_NAME)
    return pathlib.Path(str(journal) + ".legacy-jobs")


def _legacy_client(token: str, base_url: str, args: argparse.Namespace) -> LegacyClient:
    try:
        with deprecation_acknowledged():
            return LegacyClient(
                token, base_url, rate_limit=args.rate_limit, **client_settings(args)
            )
    except errors.ConfigurationError as exc:
        raise UsageError(str(exc)) from None


async def _checked_legacy(client: LegacyClient, args: argparse.Namespace) -> OpenProvider:
    try:
        # The cheapest authenticated call: a refused token fails here, before any upload.
        await client.usage()
    except errors.AuthenticationError:
        raise UsageError("the legacy token was refused (401)") from None
    return OpenProvider(LegacyProvider(client, ledger=_ledger_path(args)))


@contextlib.asynccontextmanager
async def _open_legacy(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[OpenProvider]:
    """``run --api legacy``: a ready :class:`LegacyProvider`, the token checked first.

    With ``--emulator`` a local legacy emulator serves the run. Otherwise the token comes from
    ``--api-key`` or ``AUDIOSHAKE_LEGACY_TOKEN`` and the base URL from ``--base-url``,
    ``AUDIOSHAKE_LEGACY_BASE_URL`` or groovy. Each job takes one model and one format, so every
    ``-m`` x ``-f`` pair becomes one job.
    """
    if not targets:
        raise UsageError("give at least one model with -m/--model")
    try:
        # Before the token check and any upload: a typo must not cost a run.
        check_legacy_targets(targets)
    except errors.ValidationError as exc:
        raise UsageError(str(exc)) from None
    if args.emulator:
        try:
            from ..emulator.legacy import LegacyEmulator
        except ImportError as exc:  # pragma: no cover - the emulator extra is missing
            raise emulator_missing(exc) from None
        async with (
            LegacyEmulator(delay=args.emulator_delay) as emulator,
            _legacy_client(emulator.token, emulator.base_url, args) as client,
        ):
            yield await _checked_legacy(client, args)
        return
    token = args.api_key or os.environ.get(ENV_LEGACY_TOKEN)
    if not token or not token.strip():
        raise UsageError(
            f"no legacy token: set {ENV_LEGACY_TOKEN}, pass --api-key, or use --emulator"
        )
    base_url = args.base_url or os.environ.get(ENV_LEGACY_BASE_URL) or DEFAULT_LEGACY_BASE_URL
    async with _legacy_client(token, base_url, args) as client:
        yield await _checked_legacy(client, args)


# --------------------------------------------------------------------------- Music.AI


async def _checked_musicai(client: MusicAI, workflow: str) -> OpenProvider:
    try:
        workflows = await client.workflows.list()
    except errors.AuthenticationError:
        raise UsageError("the Music.AI API key was refused (401)") from None
    slugs = sorted(w.slug for w in workflows if w.slug)
    if workflow not in slugs:
        known = ", ".join(slugs) or "none"
        raise UsageError(f"unknown workflow {workflow!r} (available: {known})")
    return OpenProvider(MusicAIProvider(client, workflow=workflow))


@contextlib.asynccontextmanager
async def _open_musicai(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[OpenProvider]:
    """``run --provider musicai``: a ready provider, the workflow checked before any upload.

    With ``--emulator`` a local Music.AI emulator serves the run; otherwise the key comes from
    ``--api-key`` or ``MUSICAI_API_KEY`` and the base URL from ``--base-url``,
    ``MUSICAI_BASE_URL`` or the default.
    """
    workflow = targets[0].model if targets else ""
    if args.emulator:
        try:
            from ..emulator.musicai import MusicAIEmulator
        except ImportError as exc:  # pragma: no cover - the emulator extra is missing
            raise emulator_missing(exc) from None
        async with (
            MusicAIEmulator(delay=args.emulator_delay) as emulator,
            MusicAI(
                emulator.api_key,
                emulator.base_url,
                rate_limit=args.rate_limit,
                **client_settings(args),
            ) as client,
        ):
            yield await _checked_musicai(client, workflow)
        return
    key = args.api_key or os.environ.get(MUSICAI_API_KEY)
    if not key:
        raise UsageError(f"no API key: set {MUSICAI_API_KEY}, pass --api-key, or use --emulator")
    base_url = args.base_url or os.environ.get(MUSICAI_BASE_URL_ENV) or MUSICAI_BASE_URL
    async with MusicAI(
        key, base_url, rate_limit=args.rate_limit, **client_settings(args)
    ) as client:
        yield await _checked_musicai(client, workflow)
