"""The emulator command line and the pytest plugin, each run in a real subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from audioshake_async.emulator import EmulatorConfig, knob_names
from audioshake_async.emulator.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


async def run_cli(args: list[str], sig: signal.Signals) -> tuple[dict[str, str], int, str]:
    """Start the CLI, read its variable lines, use the server, stop it with ``sig``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    variables: dict[str, str] = {}
    try:
        while "AUDIOSHAKE_CDN_URL" not in variables:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            if not line:
                err = await proc.stderr.read()
                raise AssertionError(f"CLI exited early: {err.decode()}")
            key, _, value = line.decode().strip().partition("=")
            variables[key] = value
        async with (
            aiohttp.ClientSession(headers={"x-api-key": variables["AUDIOSHAKE_API_KEY"]}) as http,
            http.get(variables["AUDIOSHAKE_BASE_URL"] + "/models") as resp,
        ):
            assert resp.status == 200
        proc.send_signal(sig)
        stderr = await asyncio.wait_for(proc.stderr.read(), timeout=20)
        code = await asyncio.wait_for(proc.wait(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return variables, code, stderr.decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_module_cli_serves_and_stops_cleanly(sig: signal.Signals) -> None:
    variables, code, stderr = await run_cli(
        ["-m", "audioshake_async.emulator", "--port", "0", "--api-key", "k-123", "--seed", "1"],
        sig,
    )
    assert code == 0, stderr
    assert variables["AUDIOSHAKE_API_KEY"] == "k-123"
    assert variables["AUDIOSHAKE_BASE_URL"].startswith("http://127.0.0.1:")
    assert variables["AUDIOSHAKE_CDN_URL"] != variables["AUDIOSHAKE_BASE_URL"]
    assert "stopped" in stderr and "Traceback" not in stderr


async def test_top_level_cli_subcommand() -> None:
    variables, code, stderr = await run_cli(
        ["-m", "audioshake_async", "emulator", "--delay", "0", "--rate-limit", "none"],
        signal.SIGINT,
    )
    assert code == 0, stderr
    assert variables["AUDIOSHAKE_API_KEY"] == "emulator-key"


def test_every_knob_has_a_flag() -> None:
    parser = build_parser()
    flags = {a.dest for a in parser._actions}
    assert set(knob_names()) <= flags
    args = vars(
        parser.parse_args(
            [
                "--rate-limit", "none", "--retry-after", "1.5", "--error-models", "bass,drums",
                "--fail-statuses", "502,503", "--fault-routes", "POST /tasks", "--seed", "7",
                "--fail-rate", "0.25", "--max-upload-bytes", "1000",
            ]
        )
    )  # fmt: skip
    args.pop("quiet")
    config = EmulatorConfig().evolve(**args)
    assert config.rate_limit is None and config.retry_after == 1.5
    assert config.error_models == frozenset({"bass", "drums"})
    assert config.fail_statuses == (502, 503) and config.fault_routes == frozenset({"POST /tasks"})
    assert (config.seed, config.fail_rate, config.max_upload_bytes) == (7, 0.25, 1000)


def test_invalid_knob_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--fail-rate", "2"])
    assert exc.value.code == 2
    assert "fail_rate must be a fraction" in capsys.readouterr().err


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--quiet"]) == 1
    assert "cannot start" in capsys.readouterr().err


# --- pytest plugin ---------------------------------------------------------------------------
PLUGIN_TESTS = """
import aiohttp
import pytest

{mark}
async def test_fixture(audioshake_emulator):
    emu = audioshake_emulator
    assert emu.config.delay == 0
    async with aiohttp.ClientSession(headers={{"x-api-key": emu.api_key}}) as http:
        async with http.get(emu.base_url + "/models") as resp:
            assert resp.status == 200


{mark}
@pytest.mark.audioshake_emulator(fail_rate=1.0, fail_statuses=[502])
async def test_marker_knobs(audioshake_emulator):
    emu = audioshake_emulator
    async with aiohttp.ClientSession(headers={{"x-api-key": emu.api_key}}) as http:
        async with http.get(emu.base_url + "/models") as resp:
            assert resp.status == 502


{mark}
async def test_factory(audioshake_emulator_factory):
    first = await audioshake_emulator_factory(api_key="k1")
    second = await audioshake_emulator_factory(api_key="k2", delay=0.5)
    assert (first.api_key, second.api_key) == ("k1", "k2")
    assert first.base_url != second.base_url and second.config.delay == 0.5
"""


async def run_pytest(
    tmp_path: Path, mode: str, extra: list[str], mark: str | None = None
) -> tuple[int, str]:
    if mark is None:
        mark = "@pytest.mark.asyncio" if mode == "strict" else ""
    test_file = tmp_path / "test_plugin_user.py"
    test_file.write_text(textwrap.dedent(PLUGIN_TESTS.format(mark=mark)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        # Explicit plugins only (faster, and independent of which entry points are installed).
        "-p",
        "audioshake_async.emulator.plugin",
        "-o",
        f"asyncio_mode={mode}",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error::ResourceWarning",
        *extra,
        str(test_file),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**ENV, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize("mode", ["auto", "strict"])
async def test_plugin_fixtures(tmp_path: Path, mode: str) -> None:
    code, out = await run_pytest(tmp_path, mode, ["-p", "pytest_asyncio.plugin"])
    assert code == 0, out
    assert "3 passed" in out


async def test_plugin_with_anyios_own_pytest_plugin(tmp_path: Path) -> None:
    # anyio is a core dependency: its plugin alone runs the fixtures for @pytest.mark.anyio.
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    )
    code, out = await run_pytest(
        tmp_path, "strict", ["-p", "anyio.pytest_plugin"], mark="@pytest.mark.anyio"
    )
    assert code == 0, out
    assert "3 passed" in out


async def test_plugin_without_pytest_asyncio(tmp_path: Path) -> None:
    code, out = await run_pytest(tmp_path, "auto", ["-k", "test_fixture"])
    assert code != 0
    assert "needs the pytest-asyncio plugin" in out and "pip install pytest-asyncio" in out


async def test_import_needs_neither_pytest_asyncio_nor_numpy() -> None:
    code = (
        "import sys\n"
        "sys.modules['numpy'] = None\n"
        "sys.modules['pytest_asyncio'] = None\n"
        "import audioshake_async.emulator.plugin, audioshake_async.emulator\n"
        "assert 'numpy' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "print('ok')\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env=ENV
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0 and out.strip() == b"ok"
