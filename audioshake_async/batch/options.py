"""Every knob of a batch, typed, with its default and why."""

from __future__ import annotations

import logging
import sys
from collections.abc import (
    Mapping,
)
from typing import Any, TypedDict

import attrs

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

from .. import errors
from ..core.http import PollPolicy
from ..storage.s3 import S3Settings
from .seam import Hints, Listing
from .window import DEFAULT_POLL_SHARE

__all__ = ["BatchOptionValues", "BatchOptions", "Unpack", "options_with"]

logger = logging.getLogger("audioshake_async.batch")


@attrs.frozen
class BatchOptions:
    """Tuning of a batch; the defaults suit the documented 60 requests/s account limit."""

    #: Uploads at once; None adapts (from 4, up to 64) to the network and the budget.
    upload_concurrency: int | None = None
    #: ``POST /tasks`` at once; None adapts (from 16, up to 64).
    create_concurrency: int | None = None
    download_concurrency: int = 8
    #: Items admitted and not yet finished, at most; None sizes the window from Little's law
    #: (creation rate the budget allows x time a task spends in flight), up to 20,000.
    max_in_flight: int | None = None
    #: Share of the request rate that refreshes (list pages, single reads, webhook
    #: confirmations) may spend while creates are waiting; the rest is the creates'.
    poll_share: float = DEFAULT_POLL_SHARE
    #: Requests per second of the account's budget; None: the provider's client-side limit
    #: (``request_rate``) when it has one, else the documented 60.
    request_rate: float | None = None
    #: Seconds an item may wait for its task; None waits as long as it takes.
    task_timeout: float | None = None
    poll: PollPolicy | None = None
    #: Extra fields for the task ``metadata`` (a JSON object that also carries the token).
    metadata: Mapping[str, Any] | None = None
    #: Seconds after which an uploaded source is uploaded again; None: the provider's source
    #: lifetime less a margin (two hours of the Tasks API's 72).
    asset_max_age: float | None = None
    #: Pages of ``GET /tasks`` searched for a token after an ambiguous create when the intent
    #: time is unknown; with it, the search goes back to an hour before the intent.
    reconcile_pages: int = 10
    #: ``POST /tasks`` attempts per item when each ends ambiguously and the token is not found.
    create_attempts: int = 4
    #: Refresh many tasks through ``GET /tasks`` pages when cheaper than one GET each.
    list_refresh: bool = True
    #: Requests at once while refreshing tasks.
    poll_concurrency: int = 16
    #: Compute SHA-256 of inputs and outputs for the journal.
    checksum: bool = True
    #: Deliveries drive the waiting: they are hints confirmed by a read (about one per task:
    #: close deliveries are coalesced, many due at once ride on list pages); polling drops to
    #: a slow safety poll (deliveries can be lost).
    webhooks: Hints | None = None
    #: List pages and token lookups from a shared source (many workers, one listing reader)
    #: instead of each run paging the account listing itself.
    listing: Listing | None = None
    #: After a crash during an upload, look the upload up by name (``GET /assets``, one
    #: unpaginated answer for the whole account) instead of uploading again. Uploads are not
    #: billed: many-worker runs turn this off to keep lookups bounded as the account grows.
    find_interrupted_uploads: bool = True
    #: Seconds between safety polls of a task while ``webhooks`` drive the waiting.
    safety_poll: float = 180.0
    #: Seconds a delivery that shows targets still running waits for their deliveries before
    #: its confirming read (0: read at once, one read per delivery).
    hint_coalesce: float = 1.0
    #: Seconds a task may go without one successful read (outage, wrong provider) before its
    #: item fails; a refusal (401, 403, 400) fails it at once. A rerun resumes it.
    unreachable_timeout: float = 3600.0
    #: Items an earlier run recorded as failed get a new task (billed again) instead of
    #: re-reading the failed one; outputs already written are kept.
    retry_failed: bool = False
    #: How ``s3://`` inputs and outputs reach the store (endpoint, region, the lifetime of
    #: presigned input URLs, multipart part size); None: the AWS environment's defaults.
    s3: S3Settings | None = None

    def __attrs_post_init__(self) -> None:
        for name in (
            "upload_concurrency",
            "create_concurrency",
            "download_concurrency",
            "max_in_flight",
            "create_attempts",
            "poll_concurrency",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise errors.ValidationError(f"{name} must be at least 1")
        if not 0 < self.poll_share < 1:
            raise errors.ValidationError("poll_share must be between 0 and 1")
        if self.request_rate is not None and not self.request_rate > 0:
            raise errors.ValidationError("request_rate must be positive")
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise errors.ValidationError("task_timeout must be positive")


class BatchOptionValues(TypedDict, total=False):
    """The fields of :class:`BatchOptions` as keyword arguments of ``run_batch`` /
    ``client.batch`` (``**options: Unpack[BatchOptionValues]``): a misspelt option fails
    type checking. ``tests/test_batch_api.py`` keeps the two lists equal."""

    upload_concurrency: int | None
    create_concurrency: int | None
    download_concurrency: int
    max_in_flight: int | None
    poll_share: float
    request_rate: float | None
    task_timeout: float | None
    poll: PollPolicy | None
    metadata: Mapping[str, Any] | None
    asset_max_age: float | None
    reconcile_pages: int
    create_attempts: int
    list_refresh: bool
    poll_concurrency: int
    checksum: bool
    webhooks: Hints | None
    listing: Listing | None
    find_interrupted_uploads: bool
    safety_poll: float
    hint_coalesce: float
    unreachable_timeout: float
    retry_failed: bool
    s3: S3Settings | None


def options_with(base: BatchOptions | None, values: Mapping[str, Any]) -> BatchOptions:
    """``base`` (or the defaults) with ``values`` applied; an unknown name raises TypeError."""
    unknown = sorted(set(values) - {field.name for field in attrs.fields(BatchOptions)})
    if unknown:
        raise TypeError(f"unknown batch option(s): {', '.join(unknown)}")
    return attrs.evolve(base, **values) if base is not None else BatchOptions(**values)
