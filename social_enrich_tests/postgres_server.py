"""A real, throwaway PostgreSQL server for the tests: Debian's binaries, a temporary data folder, loopback only.

``initdb`` and ``postgres`` refuse to run as root, so as root they run as the ``postgres`` user
(``setpriv`` execs in place, so the PID we hold is the server's own and we stop it by that PID).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's postgresql (apt-get install postgresql) to run the PostgreSQL state-store tests"
SUPERUSER = "social_enrich_test"
START_SECONDS = 30.0  # initdb and a first start take 2-5 s on a busy machine
STOP_SECONDS = 30.0


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and postgres, or None."""
    found = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        if re.fullmatch(r"\d+(\.\d+)?", initdb.parent.parent.name) and (initdb.parent / "postgres").exists():
            found.append((tuple(int(n) for n in initdb.parent.parent.name.split(".")), initdb.parent))
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that drops root, and the user it runs as (none needed when not root)."""
    if os.geteuid() != 0:
        return [], None
    user = pwd.getpwnam("postgres") if "postgres" in {p.pw_name for p in pwd.getpwall()} else pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"], user


class PostgresServer:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url  # the superuser on the "postgres" database; tests get databases of their own

    @contextmanager
    def new_database(self) -> Iterator[str]:
        """A fresh, empty database (its URL, password included), dropped afterwards."""
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = psycopg2.connect(self.admin_url)
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
            try:
                yield self.admin_url.rsplit("/", 1)[0] + f"/{name}"
            finally:
                with admin.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE {name} WITH (FORCE)")  # FORCE: a killed child's session may linger
        finally:
            admin.close()


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb in a temporary folder, the server on a free 127.0.0.1 port with its socket in that folder;
    stopped by its PID, and the folder removed. (Not under pytest's tmp_path: that is private to root.)"""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_HINT}")
    prefix, user = _unprivileged()
    if user is not None and shutil.which("setpriv") is None:
        pytest.skip("running as root, and setpriv (util-linux) is missing to run PostgreSQL as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="social_enrich_pg_"))
    try:
        with _server(bindir, prefix, user, base) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def _server(bindir: Path, prefix: list[str], user: pwd.struct_passwd | None, base: Path) -> Iterator[PostgresServer]:
    import psycopg2
    data, sockets, password = base / "data", base / "sockets", secrets.token_hex(12)
    sockets.mkdir(parents=True)
    (base / "pwfile").write_text(password + "\n")
    if user is not None:
        for path in (base, sockets, base / "pwfile"):
            os.chown(path, user.pw_uid, user.pw_gid)
    log = base / "postgres.log"
    initdb = subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={base / 'pwfile'}",
         "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
        capture_output=True, text=True, timeout=START_SECONDS, cwd=base,
    )  # fmt: skip
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
    port = _free_port()
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=out, stderr=subprocess.STDOUT, cwd=base,
        )  # fmt: skip
    admin_url = f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"postgres exited with {server.returncode}: {log.read_text()[-2000:]}")
            try:
                psycopg2.connect(admin_url, connect_timeout=2).close()
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {START_SECONDS:.0f} s: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield PostgresServer(admin_url)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown: sessions ended, clean stop
        try:
            server.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=STOP_SECONDS)
