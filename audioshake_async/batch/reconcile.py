"""Finding the task an ambiguous create may have made, by the client token in its metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import (
    Sequence,
)

from ..models import Task
from .seam import BatchProvider

logger = logging.getLogger("audioshake_async.batch")


#: Task creation times may be skewed from this machine's clock by up to this much.
CLOCK_SKEW = 3600.0
#: The most pages a token search reads (100 000 tasks at 100 a page).
MAX_RECONCILE_PAGES = 1000


async def find_by_token(
    provider: BatchProvider, token: str, *, since: float | None, pages: int
) -> Task | None:
    """Search recent tasks for one whose metadata carries ``token``.

    With ``since`` (when the create was first attempted), pages are read until they reach
    tasks created well before it; the listing's order is not documented, so an oldest-first
    listing is read to its end (both within MAX_RECONCILE_PAGES). Without it, ``pages`` pages.
    """
    if not provider.supports_listing:
        return None
    cutoff = None if since is None else since - CLOCK_SKEW
    limit = pages if cutoff is None else MAX_RECONCILE_PAGES
    skip = 0
    for _ in range(limit):
        page = await provider.page(skip=skip, take=provider.page_size)
        for task in page:
            if task.metadata and token in task.metadata and token_of(task) == token:
                return task
        if len(page) < provider.page_size:
            return None
        if cutoff is not None and newest_first_and_older_than(page, cutoff):
            return None
        if cutoff is not None and not any(t.created_at for t in page):
            # No creation times to judge by: only the fixed number of pages.
            cutoff, limit = None, pages
        skip += provider.page_size
    return None


def token_of(task: Task) -> str | None:
    """The client token in a task's metadata (a JSON object), if any."""
    try:
        data = json.loads(task.metadata or "")
    except ValueError:
        return None
    token = data.get("client_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def newest_first_and_older_than(page: Sequence[Task], cutoff: float) -> bool:
    """True when the page is in newest-first order and its last task predates ``cutoff``."""
    first, last = page[0].created_at, page[-1].created_at
    if first is None or last is None or first < last:
        return False
    return last.timestamp() < cutoff
