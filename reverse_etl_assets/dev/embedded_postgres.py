"""Throwaway PostgreSQL clusters for development and tests, driven by the OS's initdb and pg_ctl.

A cluster lives in one directory that also remembers its TCP port; under root it runs as `postgres`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors, sql

from reverse_etl_assets.postgres.connect import parse_dsn

INSTALL_HINT = (
    "install them with `sudo apt-get install -y postgresql` (Debian/Ubuntu) "
    "or `brew install postgresql@16` (macOS)"
)
SUPERUSER = "postgres"
OS_USER = "postgres"
DAGSTER_DATABASE = "dagster"

# Layout of a cluster directory.
_PGDATA = "pgdata"
_PORT_FILE = "port"
_LOG_FILE = "log"
_SOCKET_DIR = "sock"
_LOCK_FILE = ".lock"

# Tuned for bulk loads now and logical replication later; fsync stays on so a crash of the
# machine cannot leave a dev database silently corrupt.
_SETTINGS = {
    "wal_level": "logical",
    "max_wal_size": "4GB",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "512MB",
    # A stalled replication slot may hold at most this much WAL before the server drops it.
    "max_slot_wal_keep_size": "4GB",
}
# sun_path is 108 bytes with the trailing NUL; the socket file name adds at most this much.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = ".s.PGSQL.65535"
_READY_TIMEOUT_SECONDS = 60.0


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be found, created, started or stopped."""


@dataclass(frozen=True, kw_only=True)
class _Cluster:
    """One cluster directory, the server binaries that run it and the OS user they run as."""

    root: Path
    bin_dir: Path
    os_user: str | None

    @property
    def pgdata(self) -> Path:
        return self.root / _PGDATA

    @property
    def port_file(self) -> Path:
        return self.root / _PORT_FILE

    @property
    def log_file(self) -> Path:
        return self.root / _LOG_FILE

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as the cluster's OS user when set) and capture its output."""
        command = [str(self.bin_dir / tool), *args]
        if self.os_user is not None:
            command = _as_user(self.os_user, command)
        # The caller's working directory may be closed to the server's user (a mode-700 clone).
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if check and done.returncode != 0:
            raise EmbeddedPostgresError(
                f"{tool} failed (exit {done.returncode}) for the cluster in {self.root}:\n"
                f"{done.stdout}{done.stderr}{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return f"\nlast lines of {self.log_file}:\n" + "\n".join(tail)


def find_pg_bin() -> Path:
    """Return the directory holding initdb, pg_ctl and postgres, newest version first."""
    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_version, reverse=True)
    )
    for candidate in candidates:
        if all(_is_binary(candidate / tool) for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise EmbeddedPostgresError(f"PostgreSQL server binaries not found: {INSTALL_HINT}")


def ensure_running(data_dir: Path) -> str:
    """Create the cluster in `data_dir` if missing, start it if stopped; return its DSN."""
    cluster = _Cluster(root=data_dir.resolve(), bin_dir=find_pg_bin(), os_user=_server_user())
    cluster.root.mkdir(parents=True, exist_ok=True)
    with _locked(cluster.root / _LOCK_FILE):
        if cluster.os_user is not None:
            _open_to_user(cluster.root, cluster.os_user)
        if not (cluster.pgdata / "PG_VERSION").exists():
            _init(cluster)
        port = _running_port(cluster)
        if port is None:
            port = _read_port(cluster)
            if port is None or not _port_is_free(port):
                port = _free_port()
            _start(cluster, port)
        if _read_port(cluster) != port:
            cluster.port_file.write_text(f"{port}\n")
        dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        _wait_until_ready(cluster, dsn)
    return dsn


def stop(data_dir: Path) -> None:
    """Stop the cluster in `data_dir` (fast shutdown); do nothing when it is not running."""
    root = data_dir.resolve()
    if not (root / _PGDATA / "PG_VERSION").exists():
        return
    cluster = _Cluster(root=root, bin_dir=find_pg_bin(), os_user=_server_user())
    with _locked(cluster.root / _LOCK_FILE):
        if _running_port(cluster) is not None:
            cluster.run("pg_ctl", "stop", "-D", str(cluster.pgdata), "-m", "fast", "-w")


def dagster_env(dsn: str) -> dict[str, str]:
    """Return the DAGSTER_PG_* variables dagster.yaml reads; create database `dagster` first."""
    params = parse_dsn(dsn, where="the Dagster storage DSN")
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DAGSTER_DATABASE,)
        ).fetchone()
        if found is None:
            # Another process may create it between the check and here; either way it exists.
            with contextlib.suppress(errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DAGSTER_DATABASE)))
    return {
        "DAGSTER_PG_HOST": str(params.get("host") or "127.0.0.1"),
        "DAGSTER_PG_PORT": str(params.get("port") or "5432"),
        "DAGSTER_PG_USER": str(params.get("user") or SUPERUSER),
        # dagster.yaml reads it unconditionally, so an empty value must still be set.
        "DAGSTER_PG_PASSWORD": str(params.get("password") or ""),
        "DAGSTER_PG_DB": DAGSTER_DATABASE,
    }


def _major_version(bin_dir: Path) -> float:
    version = bin_dir.parent.name
    try:
        return float(version)
    except ValueError:
        return -1.0


def _is_binary(path: Path) -> bool:
    """True for an executable that is not a script (Debian's pg_wrapper shims are Perl)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as handle:
        return handle.read(2) != b"#!"


def _server_user() -> str | None:
    """The OS user the server must run as: `postgres` under root, else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root and there is no `{OS_USER}` OS user to run it as: "
            f"{INSTALL_HINT} (the package creates the user), or create it with "
            f"`useradd --system --create-home {OS_USER}`"
        ) from None
    return OS_USER


def _as_user(user: str, command: list[str]) -> list[str]:
    if shutil.which("runuser") is not None:
        return ["runuser", "-u", user, "--", *command]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(command)]


def _open_to_user(root: Path, user: str) -> None:
    """Give `root` to `user` and let it traverse every ancestor (a clone may sit in a 700 dir)."""
    account = pwd.getpwnam(user)
    os.chown(root, account.pw_uid, account.pw_gid)
    for ancestor in reversed(root.parents):
        mode = ancestor.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise processes that manage the same cluster (say, a CLI and a Dagster run)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _init(cluster: _Cluster) -> None:
    # An initdb killed half-way leaves a directory it would refuse to reuse.
    if cluster.pgdata.exists():
        shutil.rmtree(cluster.pgdata)
    cluster.run(
        "initdb",
        "--pgdata",
        str(cluster.pgdata),
        "--username",
        SUPERUSER,
        "--encoding",
        "UTF8",
        "--locale",
        "C",
        "--auth",
        "trust",
        "--no-instructions",
    )
    lines = [f"{name} = '{value}'" for name, value in _SETTINGS.items()]
    with (cluster.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# embedded development cluster\n" + "\n".join(lines) + "\n")


def _read_port(cluster: _Cluster) -> int | None:
    try:
        return int(cluster.port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running_port(cluster: _Cluster) -> int | None:
    """The port the cluster listens on, from postmaster.pid, or None when it is not running."""
    if cluster.run("pg_ctl", "status", "-D", str(cluster.pgdata), check=False).returncode != 0:
        return None
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
    return int((cluster.pgdata / "postmaster.pid").read_text().splitlines()[3])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the server itself: connections in TIME_WAIT do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _socket_dir(cluster: _Cluster) -> Path:
    """The unix socket directory: inside the cluster, or under /tmp when that path is too long."""
    inside = cluster.root / _SOCKET_DIR
    if len(str(inside / _SOCKET_NAME).encode()) <= _MAX_SOCKET_PATH:
        directory = inside
    else:
        digest = hashlib.sha256(str(cluster.root).encode()).hexdigest()[:12]
        directory = Path("/tmp") / f"pg-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if cluster.os_user is not None:
        account = pwd.getpwnam(cluster.os_user)
        os.chown(directory, account.pw_uid, account.pw_gid)
    return directory


def _start(cluster: _Cluster, port: int) -> None:
    options = f"-p {port} -h 127.0.0.1 -k {shlex.quote(str(_socket_dir(cluster)))}"
    cluster.run(
        "pg_ctl",
        "start",
        "-D",
        str(cluster.pgdata),
        "-l",
        str(cluster.log_file),
        "-o",
        options,
        "-w",
        "-t",
        str(int(_READY_TIMEOUT_SECONDS)),
    )


def _wait_until_ready(cluster: _Cluster, dsn: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL in {cluster.root} does not accept connections at {dsn}: {exc}"
                    f"{cluster.log_tail()}"
                ) from exc
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: start, stop, or print the DSN or the Dagster env of a cluster."""
    parser = argparse.ArgumentParser(
        prog="python -m reverse_etl_assets.dev.embedded_postgres",
        description="Manage the embedded development PostgreSQL cluster.",
    )
    parser.add_argument("command", choices=["start", "stop", "dsn", "env"])
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            stop(args.data_dir)
            return 0
        dsn = ensure_running(args.data_dir)
        if args.command == "env":
            # Variables already set win, so the Dagster storage can point elsewhere.
            for name, value in dagster_env(dsn).items():
                if name not in os.environ:
                    print(f"export {name}={shlex.quote(value)}")
        elif args.command == "start":
            print(f"PostgreSQL running at {dsn} (data in {args.data_dir})", file=sys.stderr)
            print(dsn)
        else:
            print(dsn)
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
