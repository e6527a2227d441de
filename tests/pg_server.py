"""A throwaway PostgreSQL server for tests, started from Debian's binaries in /usr/lib/postgresql.

:func:`start_postgres` runs ``initdb`` in a fresh folder under /tmp, starts the server on a free port
of 127.0.0.1 only (its unix socket stays inside that folder, so it never meets a system cluster),
creates the database ``effnas`` owned by the password-protected role ``effnas``, and returns an
SQLAlchemy URL with a function that stops the server and removes the folder.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` system user, which
owns the folder. Missing server binaries skip the tests that need the server, except where
``EFFNAS_REQUIRE_POSTGRES=1`` (CI) makes them fail; ``.ci/install_postgres.sh`` installs them. A missing
psycopg2 (a test dependency) always fails.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from net import free_port  # tests/net.py: pytest puts tests/ on sys.path

__all__ = ["find_bindir", "require_postgres", "start_postgres", "postgres_url"]

SERVER_USER = "postgres"
DB_NAME = "effnas"
ROLE = "effnas"
INSTALL_HINT = "run .ci/install_postgres.sh (Debian's postgresql package and psycopg2-binary)"

# Durability buys nothing for a database deleted after the tests; these make every commit cheap.
_SERVER_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=60",
                    "shared_buffers=16MB", "log_min_messages=warning")


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (or $EFFNAS_PG_BINDIR)."""
    candidates = [os.environ["EFFNAS_PG_BINDIR"]] if os.environ.get("EFFNAS_PG_BINDIR") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for path in map(Path, candidates):
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _version_key(bindir: str) -> tuple:
    version = Path(bindir).parent.name
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _missing_reason() -> str | None:
    if find_bindir() is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin; {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root but there is no {SERVER_USER!r} system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root but `runuser` (util-linux) is missing"
    return None


def require_postgres() -> None:
    """Skip (or, with EFFNAS_REQUIRE_POSTGRES=1, fail) when no server can be started on this
    machine. psycopg2 is a declared test dependency: without it the tests fail, never skip."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is not installed: it is a test dependency (pip install -e '.[test]')")
    reason = _missing_reason()
    if reason is None:
        return
    if os.environ.get("EFFNAS_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)



def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], cwd: Path, timeout: float = 60) -> None:
    # cwd inside the server's own folder: the server user may not be able to enter the caller's.
    proc = subprocess.run(_as_server_user(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")


def _make_home() -> Path:
    """A private folder owned by the server user; /tmp keeps the socket path short and traversable."""
    home = Path(tempfile.mkdtemp(prefix="effnas-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    return home


def _initdb(bindir: Path, home: Path, password: str) -> Path:
    data = home / "data"
    pwfile = home / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    # The superuser is the role the tests use: password (scram) over TCP, trust on the private socket.
    _run([str(bindir / "initdb"), "-D", str(data), "-U", ROLE, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
          "--auth-local=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"], cwd=home)
    pwfile.unlink()
    return data


def _start(bindir: Path, home: Path, data: Path) -> int:
    """Start on a free port; retried because another process may take the port in between."""
    error: Exception | None = None
    for _ in range(3):
        port = free_port()
        options = " ".join([f"-p {port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={home}",
                            *(f"-c {s}" for s in _SERVER_SETTINGS)])
        try:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-o", options,
                  "-w", "-t", "60", "start"], cwd=home, timeout=90)
            return port
        except RuntimeError as e:
            error = e
    log = (home / "server.log").read_text()[-2000:] if (home / "server.log").exists() else ""
    raise RuntimeError(f"PostgreSQL did not start: {error}\nserver log:\n{log}")


def _create_database(port: int, password: str) -> None:
    import psycopg2

    con = psycopg2.connect(host="127.0.0.1", port=port, user=ROLE, password=password, dbname="postgres")
    try:
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {ROLE}")
    finally:
        con.close()


def _stopper(bindir: Path, home: Path, data: Path) -> Callable[[], None]:
    def stop() -> None:
        try:
            if (data / "postmaster.pid").exists():
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], cwd=home)
        except (RuntimeError, subprocess.TimeoutExpired):
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=home)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    return stop


def start_postgres() -> tuple[str, Callable[[], None]]:
    """Start a private server; returns its SQLAlchemy URL (database ``effnas``) and a stop function.

    Raises:
        RuntimeError: initdb or the server failed (the message carries the server log).
    """
    reason = _missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = find_bindir()
    password = secrets.token_hex(12)  # hex: nothing to quote in a URL
    home = _make_home()
    data = home / "data"
    stop = _stopper(bindir, home, data)
    try:
        _initdb(bindir, home, password)
        port = _start(bindir, home, data)
        _create_database(port, password)
    except BaseException:
        stop()
        raise
    return f"postgresql+psycopg2://{ROLE}:{password}@127.0.0.1:{port}/{DB_NAME}", stop


@pytest.fixture(scope="module")
def postgres_url():
    """SQLAlchemy URL of a fresh database on a private server, stopped after the module's tests."""
    require_postgres()
    url, stop = start_postgres()
    try:
        yield url
    finally:
        stop()
