"""``s3://`` inputs: prefixes listed lazily, objects checked and identified by ETag and size.

An ``s3://bucket/prefix/`` (or a whole bucket) stands for every object under it with an input
extension of the provider, listed a page at a time as the batch asks for more; an
``s3://bucket/key`` is one object. Neither is ever uploaded: each becomes a presigned GET URL
signed just before ``POST /tasks`` (see the pipeline). The journal keys the item by its
``s3://`` URI and stores its content identity (``etag:<ETag>``) where a file's SHA-256 goes,
with its size: a changed object (new ETag) is processed again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Collection
from typing import Any

from .. import errors
from ..storage.s3 import S3Object, S3Stores, S3Uri, is_s3_uri
from .items import Item
from .journal import ItemRecord
from .seam import BatchProvider

__all__ = ["check_s3_input", "expand_s3"]


async def expand_s3(
    inputs: AsyncIterable[Any],
    stores: S3Stores,
    extensions: Collection[str],
    *,
    exclude: str | None = None,
) -> AsyncIterator[Any]:
    """``inputs`` with each ``s3://`` prefix replaced by the objects under it (in key order);
    everything else, ``s3://bucket/key`` included, passes through as is. Objects under
    ``exclude`` (an ``s3://`` output root) are skipped, so stems never become inputs."""
    skip = S3Uri.parse(exclude) if exclude is not None and is_s3_uri(exclude) else None
    async for raw in inputs:
        if isinstance(raw, str) and is_s3_uri(raw) and S3Uri.parse(raw).is_prefix:
            async for found in stores.list(raw, extensions, exclude=skip):
                yield found
        else:
            yield raw


async def check_s3_input(
    item: Item, record: ItemRecord | None, found: S3Object, provider: BatchProvider
) -> ItemRecord | None:
    """Check the object against the provider and the journal; a changed object starts over."""
    extension = os.path.splitext(found.uri.rsplit("/", 1)[-1])[1].lower()
    if extension not in provider.input_extensions:
        raise errors.ValidationError(
            f"{found.uri}: {extension or 'no extension'} is not an input type "
            f"{provider.name} accepts"
        )
    if found.size == 0:
        raise errors.ValidationError(f"{found.uri} is empty")
    item.size = found.size
    if record is not None and record.size == found.size and record.sha256 == found.content_id:
        return record
    await item.journal.reset(found.size, None, found.content_id)
    return None
