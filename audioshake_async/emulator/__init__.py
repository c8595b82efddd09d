"""Local AudioShake API emulator: a real HTTP server on loopback for tests and demos.

It serves the Tasks, Assets, Models, Statistics and Webhooks routes of the AudioShake API
(shapes from the vendor docs; inferred parts are tolerant and marked [INFER] in the module
docstrings), a separate CDN port with signed, expiring download links, real output files
produced by a documented DSP stand-in (not machine learning), and seeded fault injection.

Typical use::

    from audioshake_async.emulator import Emulator

    async with Emulator(delay=0) as emu:
        ...  # point a client at emu.base_url with emu.api_key

The package never imports the client library; it speaks plain JSON over HTTP.
"""

from __future__ import annotations

from .config import EmulatorConfig, knob_names
from .server import Emulator

__all__ = ["Emulator", "EmulatorConfig", "knob_names"]
