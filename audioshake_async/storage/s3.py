"""S3 (and S3-compatible) inputs and outputs: listing, HEAD, presigned GETs, multipart writes.

Built on ``obstore`` (the ``[s3]`` extra): an async, Rust-backed object store client with
streaming multipart puts that abort themselves when the stream fails, presigning, paged listing
and no botocore. It is imported on first use only, so ``import audioshake_async`` never needs it.

Credentials and settings come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``...) and, failing those, the container or instance credentials;
:class:`S3Settings` overrides the endpoint and region.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import mimetypes
import os
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import attrs

from .. import errors
from ..core.sink import StoredOutput

if TYPE_CHECKING:
    from obstore.store import S3Store

__all__ = [
    "S3Object",
    "S3Settings",
    "S3Sink",
    "S3Stores",
    "S3Uri",
    "S3Writer",
    "is_s3_uri",
]

logger = logging.getLogger("audioshake_async.storage")

SCHEME = "s3://"
MiB = 1 << 20
#: Bytes of network chunks per write. A transfer holds two batches besides its parts, and the
#: allocator's slack grows with them: 1 GiB CDN -> S3 peaked at ~95 MiB RSS with 4 MiB
#: batches, ~77 MiB with 2 MiB, for ~0.3 s more CPU per GiB (one hash hop and hand-over per
#: batch). benchmarks/bench_s3.py measures both.
WRITE_BATCH = 2 * MiB
#: Presigned input URLs live this long by default: the service fetches a task's source when it
#: starts processing it, which may be hours after ``POST /tasks`` when the account has a
#: backlog. SigV4 allows at most 7 days (and no longer than temporary credentials last).
DEFAULT_URL_LIFETIME = 12 * 3600.0
MAX_URL_LIFETIME = 7 * 24 * 3600.0


def is_s3_uri(value: object) -> bool:
    """True for an ``s3://bucket[/key]`` string."""
    return isinstance(value, str) and value.startswith(SCHEME)


def _obstore() -> ModuleType:
    try:
        import obstore
    except ImportError:
        raise errors.ConfigurationError(
            "s3:// locations need the optional S3 support: pip install 'audioshake-async[s3]'"
        ) from None
    return obstore


@attrs.frozen
class S3Uri:
    """``s3://bucket/key``: the bucket and the key (empty for a whole bucket)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, value: str) -> S3Uri:
        """Split an ``s3://`` URI; a ValidationError for anything else."""
        if not is_s3_uri(value):
            raise errors.ValidationError(f"not an s3:// URI: {value!r}")
        bucket, _, key = value[len(SCHEME) :].partition("/")
        if not bucket or "?" in value or "#" in value:
            raise errors.ValidationError(f"an s3:// URI is s3://bucket/key, not {value!r}")
        return cls(bucket, key)

    @property
    def is_prefix(self) -> bool:
        """A bucket or a key ending in ``/``: every object under it."""
        return not self.key or self.key.endswith("/")

    def child(self, relative: str) -> S3Uri:
        """The key ``relative`` under this one, taken as a prefix."""
        base = self.key.rstrip("/")
        return S3Uri(self.bucket, f"{base}/{relative}" if base else relative)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@attrs.frozen
class S3Object:
    """One object: its URI and its content identity (size and ETag)."""

    uri: str
    size: int
    etag: str

    @property
    def content_id(self) -> str:
        """What the journal compares across runs: a changed object gets a new ETag."""
        return f"etag:{self.etag}"

    def __fspath__(self) -> str:
        # Lets the batch engine treat it like any input name (display, metadata).
        return self.uri


@attrs.frozen
class S3Settings:
    """How to reach the store and how outputs are written."""

    #: ``http(s)://host:port`` of an S3-compatible server; None: ``AWS_ENDPOINT_URL`` or AWS.
    endpoint: str | None = None
    region: str | None = None
    #: Seconds a presigned input URL stays valid (see :data:`DEFAULT_URL_LIFETIME`).
    url_lifetime: float = DEFAULT_URL_LIFETIME
    #: Multipart part size: the memory one transfer holds is about (parts in flight + 1) parts
    #: plus two read batches of :data:`WRITE_BATCH` (~20 MiB by default). 5 MiB (the S3
    #: minimum) allows outputs of up to ~48 GiB (10,000 parts); raise it for larger ones.
    part_size: int = 5 * MiB
    parts_in_flight: int = 2

    def __attrs_post_init__(self) -> None:
        if not 60 <= self.url_lifetime <= MAX_URL_LIFETIME:
            raise errors.ValidationError(
                f"url_lifetime must be between 60 s and 7 days, got {self.url_lifetime:g}"
            )
        if self.part_size < 5 * MiB:
            raise errors.ValidationError("part_size must be at least 5 MiB (the S3 minimum)")
        if self.parts_in_flight < 1:
            raise errors.ValidationError("parts_in_flight must be at least 1")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise errors.ValidationError(f"the S3 endpoint must be an http(s) URL: {self.endpoint}")


def _mapped(exc: BaseException, what: str) -> errors.AudioShakeError:
    """An obstore error as one of this package's (its text names the key, never a secret)."""
    module = _obstore()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (module.exceptions.NotFoundError, FileNotFoundError)):
        return errors.StorageNotFoundError(f"{what}: no such object")
    if isinstance(exc, (module.exceptions.PermissionDeniedError, PermissionError)):
        return errors.StorageError(f"{what}: access denied ({text})")
    if isinstance(exc, module.exceptions.UnauthenticatedError):
        return errors.StorageError(f"{what}: the S3 credentials were refused ({text})")
    return errors.StorageError(f"{what}: {text}")


class S3Stores:
    """One obstore ``S3Store`` per bucket, all with the same settings."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings()
        self._stores: dict[str, S3Store] = {}

    def __repr__(self) -> str:
        return f"S3Stores(endpoint={self.settings.endpoint!r})"

    def store(self, bucket: str) -> S3Store:
        """The store of ``bucket`` (created on first use)."""
        found = self._stores.get(bucket)
        if found is not None:
            return found
        module = _obstore()
        config: dict[str, Any] = {}
        endpoint = self.settings.endpoint or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
        if self.settings.region:
            config["region"] = self.settings.region
        options = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        try:
            store: S3Store = module.store.S3Store(bucket, client_options=options, **config)
        except Exception as exc:
            raise errors.ConfigurationError(f"cannot configure S3 for {bucket!r}: {exc}") from None
        self._stores[bucket] = store
        return store

    async def head(self, uri: str) -> S3Object:
        """The object's size and ETag (one HEAD)."""
        where = S3Uri.parse(uri)
        try:
            meta = await _obstore().head_async(self.store(where.bucket), where.key)
        except errors.AudioShakeError:
            raise
        except Exception as exc:
            raise _mapped(exc, uri) from None
        return S3Object(uri, int(meta["size"]), str(meta["e_tag"] or ""))

    async def list(
        self,
        uri: str,
        extensions: Collection[str],
        *,
        exclude: S3Uri | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[S3Object]:
        """Objects under the prefix ``uri`` whose extension is in ``extensions``, a page at a
        time (S3 lists in key order), skipping hidden names and anything under ``exclude``."""
        where = S3Uri.parse(uri)
        prefix = where.key.rstrip("/") or None
        skip = None
        if exclude is not None and exclude.bucket == where.bucket:
            # A whole bucket as the output cannot be told apart from inputs: nothing skipped.
            skip = exclude.key.rstrip("/") + "/" if exclude.key.strip("/") else None
        wanted = {e.lower() for e in extensions}
        try:
            pages = _obstore().list(self.store(where.bucket), prefix=prefix, chunk_size=page_size)
            async for page in pages:
                for meta in page:
                    key = str(meta["path"])
                    name = key.rsplit("/", 1)[-1]
                    if name.startswith(".") or (skip is not None and key.startswith(skip)):
                        continue
                    if os.path.splitext(name)[1].lower() not in wanted:
                        continue
                    yield S3Object(
                        str(S3Uri(where.bucket, key)), int(meta["size"]), str(meta["e_tag"] or "")
                    )
        except errors.AudioShakeError:
            raise
        except Exception as exc:
            raise _mapped(exc, uri) from None

    async def presign(self, uri: str, lifetime: float | None = None) -> str:
        """A presigned GET URL of ``uri`` (a credential: never log or store it)."""
        where = S3Uri.parse(uri)
        seconds = self.settings.url_lifetime if lifetime is None else lifetime
        try:
            url = await _obstore().sign_async(
                self.store(where.bucket), "GET", where.key, dt.timedelta(seconds=seconds)
            )
        except Exception as exc:
            raise _mapped(exc, uri) from None
        return str(url)


class _Abort(Exception):
    """Fed to the multipart stream to make obstore abort the upload."""


#: What the writer hands the multipart stream: chunks, the end (None), or a reason to abort.
_Feed = Sequence[bytes] | BaseException | None


class S3Writer:
    """Streams one output into a multipart upload; it appears under its key only on commit.

    The first part is held back: an output that ends within it is written by one plain PUT
    (atomic, and nothing to clean up if the process dies). A longer one becomes a multipart
    upload: ``obstore.put_async`` pulls the body from an async iterator fed through a one-slot
    queue, so at most one batch waits here and obstore holds at most ``parts_in_flight + 1``
    parts. A failure is fed into the iterator instead of cancelling the put: obstore then
    aborts the multipart upload, so no incomplete upload is left behind (a cancelled put could
    not; a killed process cannot either: a bucket lifecycle rule cleans those up).
    """

    def __init__(self, stores: S3Stores, uri: S3Uri, *, checksum: bool) -> None:
        self._stores = stores
        self._uri = uri
        self._checksum = checksum
        self._digest: Any = hashlib.sha256() if checksum else None
        self._size = 0
        self._queue: asyncio.Queue[tuple[_Feed, asyncio.Future[None]]] = asyncio.Queue(1)
        self._put: asyncio.Future[Any] | None = None
        self._stream: AsyncGenerator[bytes, None] | None = None
        #: The first part, until it is full (then the multipart upload starts with it).
        self._held: list[bytes] = []
        self._held_size = 0

    @property
    def location(self) -> str:
        """The ``s3://`` URI of the final object."""
        return str(self._uri)

    @property
    def batch_size(self) -> int:
        """:data:`WRITE_BATCH`: smaller than a disk write's, as the parts hold memory too."""
        return WRITE_BATCH

    def _attributes(self) -> dict[str, str]:
        kind = mimetypes.guess_type(self._uri.key)[0]
        return {"Content-Type": kind} if kind else {}

    async def _body(self) -> AsyncGenerator[bytes, None]:
        while True:
            feed, taken = await self._queue.get()
            if not taken.done():
                taken.set_result(None)
            if feed is None:
                return
            if isinstance(feed, BaseException):
                raise feed
            # In pieces of about 1 MiB: each step is a hop between obstore's runtime and the
            # event loop (network chunks one by one cost ~25% of the throughput), while a
            # joined copy of a whole batch costs 4 MiB more memory per transfer.
            piece: list[bytes] = []
            size = 0
            for chunk in feed:
                piece.append(chunk)
                size += len(chunk)
                if size >= MiB:
                    yield piece[0] if len(piece) == 1 else b"".join(piece)
                    piece, size = [], 0
            if piece:
                yield piece[0] if len(piece) == 1 else b"".join(piece)
            del feed, piece

    def _start(self) -> asyncio.Future[Any]:
        settings = self._stores.settings
        self._queue = asyncio.Queue(1)
        self._stream = self._body()
        self._put = asyncio.ensure_future(
            _obstore().put_async(
                self._stores.store(self._uri.bucket),
                self._uri.key,
                self._stream,
                attributes=self._attributes(),
                chunk_size=settings.part_size,
                max_concurrency=settings.parts_in_flight,
            )
        )
        return self._put

    async def _feed(self, feed: _Feed) -> None:
        put = self._put or self._start()
        if put.done():
            sending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sending.cancel()
        else:
            # Done once the stream has taken the batch (not merely queued it): one batch
            # waits here at most, so a transfer holds no more than it must.
            # (Writes come one at a time, each waiting for this: the slot is free.)
            sending = asyncio.get_running_loop().create_future()
            self._queue.put_nowait((feed, sending))
        try:
            await asyncio.wait({sending, put}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.done():
                sending.cancel()
        if not sending.done() or sending.cancelled():
            # The upload ended before taking the data: it failed.
            try:
                put.result()
            except Exception as exc:
                raise _mapped(exc, self.location) from None
            raise errors.StorageError(f"{self.location}: the upload ended early")

    def _hash(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            self._digest.update(chunk)

    async def write(self, chunks: Sequence[bytes]) -> None:
        """Hash (in a worker thread: hashlib releases the GIL) and hand over one batch."""
        batch = list(chunks)
        if self._digest is not None:
            await anyio.to_thread.run_sync(self._hash, batch)
        size = sum(len(c) for c in batch)
        self._size += size
        if self._put is None:
            self._held.extend(batch)
            self._held_size += size
            if self._held_size < self._stores.settings.part_size:
                return
            batch, self._held, self._held_size = self._held, [], 0
        await self._feed(batch)

    async def restart(self) -> None:
        """Abort the upload (or drop the first part); the next write starts a new one."""
        await self.abort()
        self._size = 0
        self._digest = hashlib.sha256() if self._checksum else None

    async def commit(self) -> StoredOutput:
        """Complete the multipart upload (a single PUT for an empty output)."""
        with anyio.CancelScope(shield=True):
            try:
                if self._put is None:
                    body, self._held, self._held_size = b"".join(self._held), [], 0
                    try:
                        await _obstore().put_async(
                            self._stores.store(self._uri.bucket),
                            self._uri.key,
                            body,
                            attributes=self._attributes(),
                            use_multipart=False,
                        )
                    except Exception as exc:
                        raise _mapped(exc, self.location) from None
                else:
                    await self._feed(None)
                    put, self._put = self._put, None
                    try:
                        await put
                    except Exception as exc:
                        raise _mapped(exc, self.location) from None
                    finally:
                        await self._close_stream()
            except BaseException:
                await self.abort()
                raise
        digest = self._digest.hexdigest() if self._digest is not None else None
        return StoredOutput(self.location, self._size, digest)

    async def abort(self) -> None:
        """Make obstore abort the multipart upload, and wait until it has."""
        self._held, self._held_size = [], 0
        put, self._put = self._put, None
        if put is None:
            return
        with anyio.CancelScope(shield=True):
            if not put.done():
                # The slot may hold a batch nobody will take: replace it with the abort.
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                self._queue.put_nowait(
                    (_Abort("aborted"), asyncio.get_running_loop().create_future())
                )
            with contextlib.suppress(Exception):
                await put
            await self._close_stream()

    async def _close_stream(self) -> None:
        # Closed here, on the loop, once obstore is done with it: an async generator that
        # obstore's runtime still references at interpreter exit aborts the process (SIGABRT
        # at exit in about half of the runs that wrote a multipart upload, obstore 0.12).
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()


class S3Sink:
    """Outputs as objects under an ``s3://bucket/prefix`` (same layout as on disk)."""

    def __init__(self, root: str, stores: S3Stores) -> None:
        self.root = S3Uri.parse(root)
        self.stores = stores

    def __repr__(self) -> str:
        return f"S3Sink({str(self.root)!r})"

    def location(self, relative: str) -> str:
        """The ``s3://`` URI of ``relative``."""
        return str(self.root.child(relative))

    async def open(self, relative: str, *, checksum: bool) -> S3Writer:
        """A writer for ``relative`` (no request until the first bytes)."""
        self.stores.store(self.root.bucket)  # a configuration error shows before the download
        return S3Writer(self.stores, self.root.child(relative), checksum=checksum)

    async def present(self, relative: str, size: int, sha256: str | None) -> bool:
        """One HEAD: the object exists with the recorded size. (Its SHA-256 is in the journal:
        S3 metadata is fixed when a multipart upload starts, before the digest is known.)"""
        try:
            found = await self.stores.head(self.location(relative))
        except errors.StorageNotFoundError:
            return False
        return found.size == size
