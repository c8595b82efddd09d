"""``audioshake-async emulator [options]`` / ``python -m audioshake_async.emulator``.

Starts the emulator, prints ``AUDIOSHAKE_BASE_URL=...``, ``AUDIOSHAKE_API_KEY=...`` and
``AUDIOSHAKE_CDN_URL=...`` lines on stdout (ready for ``export``), then serves until SIGINT
or SIGTERM and exits 0. Every :class:`EmulatorConfig` knob has a flag: ``fail_rate`` is
``--fail-rate``; list knobs take comma-separated values; ``--rate-limit none`` disables the
rate limit. ``samples DIR`` writes three short WAV tracks to use as inputs instead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import attrs

from .config import EmulatorConfig
from .server import Emulator

_OPTIONAL_NUMBERS = {"rate_limit", "rate_limit_capacity", "retry_after", "credits"}
_LISTS = {"error_models", "fault_routes"}

_HELP = {
    "api_key": "value clients must send as x-api-key",
    "host": "API bind address",
    "port": "API port (0 = any free port)",
    "cdn_host": "CDN bind address",
    "cdn_port": "CDN port (0 = any free port)",
    "seed": "seed for every random decision",
    "delay": "seconds before a target turns terminal",
    "jitter": "extra uniform random seconds per target",
    "target_error_rate": "fraction of targets ending in error",
    "error_models": "comma-separated models whose targets always error",
    "max_upload_bytes": "largest accepted upload",
    "asset_ttl": "seconds before an asset expires",
    "link_ttl": "seconds a download link stays valid",
    "credits": "credit balance (none = unlimited)",
    "rate_limit": "requests per second (none = unlimited)",
    "retry_after": "Retry-After seconds sent with 429 (none = no header)",
    "fail_rate": "fraction of API requests answered 5xx",
    "drop_rate": "fraction of API requests whose connection is dropped",
    "drop_after_create_rate": "fraction of POST /tasks dropped after creating the task",
    "drop_after_create": "the next N POST /tasks are dropped after creating the task",
    "truncate_rate": "fraction of CDN downloads cut after about half the bytes",
    "stale_rate": "fraction of GET /tasks/{id} answered with the creation snapshot",
    "latency": "extra seconds per API request",
    "max_active_tasks": "POST /tasks answers 429 while N tasks are processing (none = no limit)",
}


def _optional_float(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "0", ""):
        return None
    return float(text)


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "") else int(text)


def _str_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _int_list(text: str) -> list[int]:
    return [int(item) for item in _str_list(text)]


def _converter(field: attrs.Attribute[Any]) -> Callable[[str], Any]:
    if field.name in _OPTIONAL_NUMBERS:
        return _optional_float
    if field.name in ("seed", "max_active_tasks"):
        return _optional_int
    if field.name in _LISTS:
        return _str_list
    if field.name == "fail_statuses":
        return _int_list
    default = field.default
    if isinstance(default, bool):
        return lambda text: text.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one flag per knob, defaults taken from :class:`EmulatorConfig`."""
    parser = argparse.ArgumentParser(
        prog="audioshake-async emulator",
        description="Run a local AudioShake API emulator (API + CDN on loopback).",
        argument_default=argparse.SUPPRESS,
    )
    defaults = EmulatorConfig()
    for field in attrs.fields(EmulatorConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        shown = ",".join(map(str, sorted(default))) if isinstance(default, frozenset) else default
        parser.add_argument(
            flag,
            dest=field.name,
            type=_converter(field),
            metavar=field.name.split("_")[-1].upper(),
            help=f"{_HELP.get(field.name, field.name.replace('_', ' '))} (default: {shown})",
        )
    parser.add_argument(
        "--quiet", action="store_true", default=False, help="print only the variable lines"
    )
    return parser


async def serve(config: EmulatorConfig, out: TextIO, err: TextIO, quiet: bool = False) -> None:
    """Run the emulator until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        async with Emulator(config) as emu:
            out.write(f"AUDIOSHAKE_BASE_URL={emu.base_url}\n")
            out.write(f"AUDIOSHAKE_API_KEY={emu.api_key}\n")
            out.write(f"AUDIOSHAKE_CDN_URL={emu.cdn_url}\n")
            out.flush()
            if not quiet:
                err.write(
                    f"audioshake emulator: API {emu.base_url}, CDN {emu.cdn_url} (Ctrl-C to stop)\n"
                )
                err.flush()
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if not quiet:
        err.write("audioshake emulator: stopped\n")


def samples_main(argv: Sequence[str]) -> int:
    """``emulator samples DIR``: write the sample tracks (a wheel ships no audio)."""
    parser = argparse.ArgumentParser(
        prog="audioshake-async emulator samples",
        description="Write three short synthetic WAV tracks to DIR, inputs for a demo run.",
    )
    parser.add_argument("directory", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        from .samples import write_samples
    except ImportError as exc:
        print(
            f"audioshake emulator: samples need numpy: pip install 'audioshake-async[emulator]' "
            f"({exc})",
            file=sys.stderr,
        )
        return 2
    try:
        for path in write_samples(args.directory):
            print(path)
    except OSError as exc:
        print(f"audioshake emulator: cannot write samples: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (``samples DIR`` writes sample audio)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["samples"]:
        return samples_main(arguments[1:])
    argv = arguments
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    quiet = bool(args.pop("quiet"))
    try:
        config = EmulatorConfig().evolve(**args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config, sys.stdout, sys.stderr, quiet))
    except KeyboardInterrupt:  # no signal handlers on this platform
        pass
    except OSError as exc:
        print(f"audioshake emulator: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
