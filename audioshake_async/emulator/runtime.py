"""The shared state every part of a running emulator sees (config, store, links, faults).

``Emulator`` (the public facade in ``server.py``) owns one ``Runtime``; the API app, the
CDN app, the uploads, the processor and the webhook dispatcher all receive it, which keeps
them free of import cycles and of any reference to the facade. The legacy emulator builds
one too, for the parts it reuses (processing, CDN, uploads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from .config import EmulatorConfig
from .faults import FaultInjector
from .files import FileRegistry
from .links import LinkSigner
from .state import Asset, OutputFile, Store, Task


@attrs.define(eq=False)
class Runtime:
    """Mutable shared state of one emulator instance."""

    config: EmulatorConfig
    store: Store
    faults: FaultInjector
    signer: LinkSigner
    files: FileRegistry
    workdir: Path
    clock: Callable[[], float] = time.time
    cdn_base_url: str = ""
    http: aiohttp.ClientSession | None = None

    def link(self, file_id: str, filename: str) -> str:
        """A fresh signed link valid for ``link_ttl`` seconds from now."""
        expires = int(self.clock() + self.config.link_ttl)
        return self.signer.sign(self.cdn_base_url, file_id, filename, expires)

    def output_link(self, output: OutputFile) -> str:
        """Signed link of one produced file."""
        return self.link(output.file_id, output.filename)

    def asset_link(self, asset: Asset) -> str:
        """Signed link of an asset's source file."""
        return self.link(asset.file_id, asset.name)

    def render_task(self, task: Task) -> dict[str, Any]:
        """The task JSON with freshly signed links."""
        return task.to_json(self.output_link)
