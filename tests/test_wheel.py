"""The wheel alone runs the README's first command: build it, install it in a fresh venv, run.

The venv sees this environment's site-packages (``--system-site-packages``) for the
dependencies, so nothing is downloaded; the package itself comes from the wheel only
(``--no-deps``), and the test checks that the venv's copy is the one imported.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys
import venv
import wave
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIP = (sys.executable, "-m", "pip")


def readme_first_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    pytest.importorskip("hatchling")
    pytest.importorskip("pip")  # a uv-made venv (the lowest-direct run) has no pip
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("audioshake_async-*.whl")
    return built


def test_the_wheel_carries_the_license_the_typing_marker_and_no_tests(
    wheel: pathlib.Path,
) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names[-10:]
    assert "audioshake_async/py.typed" in names
    assert "audioshake_async/emulator/samples.py" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    text = metadata.decode()
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in text
    assert "Project-URL: Documentation" in text and "License-Expression: MIT" in text


def test_readme_first_command_works_from_the_wheel(
    wheel: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "user"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import audioshake_async; print(audioshake_async.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert pathlib.Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    # The README's first command, with the install step done above from the wheel.
    command = readme_first_command()
    install, _, rest = command.partition(" && ")
    assert install.startswith("pip install") and "[emulator]" in install, command
    done = subprocess.run(
        rest,
        shell=True,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parts = shlex.split(rest.split(" && ")[-1])
    out_dir = work / parts[parts.index("-o") + 1]
    stems = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.wav"))
    assert len(stems) == 3 * 4, stems
    for path in out_dir.rglob("*.wav"):
        with wave.open(str(path)) as handle:
            assert handle.getnframes() > 0
    assert "3 of 3 items finished: 3 done" in done.stdout
