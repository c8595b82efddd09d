"""The ``audioshake-async`` command: the composition root of the package.

All work is done by the batch engine; this package turns flags into a target list and options,
checks everything it can before the first upload (exit 2 with one clear line), shows progress,
and exits 0 when every item is done, 1 when some failed.

Nothing in the library imports this package: it opens each service (``providers``), parses the
command line (``parser``), shows progress (``display``) and runs the commands (``run``).
"""

from .display import ProgressTracker
from .main import entry, main
from .parser import UsageError, build_parser, parse_targets
from .run import RunSummary

__all__ = [
    "ProgressTracker",
    "RunSummary",
    "UsageError",
    "build_parser",
    "entry",
    "main",
    "parse_targets",
]
