"""``python -m audioshake_async.emulator.musicai``."""

from .cli import main

raise SystemExit(main())
