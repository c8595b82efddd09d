"""Regenerate the sample tracks in ``examples/audio/`` (deterministic; needs numpy).

The generator lives in the emulator (``audioshake_async.emulator.samples``) so that an
installed package can make them too: ``audioshake-async emulator samples DIR``.
"""

from __future__ import annotations

from pathlib import Path

from audioshake_async.emulator.samples import write_samples

if __name__ == "__main__":
    for path in write_samples(Path(__file__).resolve().parent / "audio"):
        print(path)
