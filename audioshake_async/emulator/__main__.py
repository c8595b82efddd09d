"""``python -m audioshake_async.emulator``: run the emulator until Ctrl-C."""

from .cli import main

raise SystemExit(main())
