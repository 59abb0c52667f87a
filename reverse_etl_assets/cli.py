"""`reverse-etl`: validate, sync, follow, verify, delete and show status, from a terminal or script.

Reads the same spec and env vars as the Dagster code location and runs the same core code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import psycopg

from reverse_etl_assets import settings
from reverse_etl_assets.delta.reader import enable_change_data_feed, open_source
from reverse_etl_assets.errors import ReverseEtlError, SpecError, translate
from reverse_etl_assets.pipelines.delta_to_postgres.delete import delete_synced_table
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follow_table
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_readers, check_source
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.delta_to_postgres.status import TableStatus, table_status
from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table
from reverse_etl_assets.pipelines.postgres_to_delta.delete import delete_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.follow import follow_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.preflight import check_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.run import (
    LakehouseResult,
    source_dsn,
    sync_lakehouse,
)
from reverse_etl_assets.pipelines.postgres_to_delta.status import (
    LakehouseStatus,
    read_lakehouse_status,
)
from reverse_etl_assets.pipelines.postgres_to_delta.verify import verify_lakehouse
from reverse_etl_assets.postgres import state
from reverse_etl_assets.postgres.connect import connect, redact
from reverse_etl_assets.postgres.replication.lsn import format_lsn
from reverse_etl_assets.runtime.progress import describe_progress
from reverse_etl_assets.runtime.signals import stop_on_signals
from reverse_etl_assets.spec import LakehouseSync, Spec, SyncedTable, load_spec, resolve_source

STATUS_COLUMNS = (
    "name",
    "mode",
    "detailed_state",
    "source_version",
    "last_synced_version",
    "lag_versions",
    "rows",
    "last_sync_time",
    "message",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except Exception as exc:
        print(f"error: {_explain(_as_failure(exc))}", file=sys.stderr)
        return 1


def _as_failure(exc: Exception) -> ReverseEtlError:
    """`exc` in the error policy's terms; anything the policy does not know is a bug: re-raised."""
    failure = translate(exc)
    if failure is None:
        raise exc
    return failure


def _explain(failure: ReverseEtlError) -> str:
    """The failure's message, with whether a retry can help, and no password in it."""
    retry = "" if failure.terminal else " (transient: a retry may succeed)"
    text = f"{failure}{retry}"
    # REVERSE_ETL_PG_DSN, and any other DSN in the environment (a `source_dsn_env` of the spec).
    for value in os.environ.values():
        if "://" in value or "password" in value:
            text = redact(text, value)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reverse-etl",
        description="Synced tables from Delta Lake to PostgreSQL, and lakehouse syncs back.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check the spec and every source; no writes")
    validate.set_defaults(run=_validate)

    sync = commands.add_parser("sync", help="sync a table now (the same code as the asset)")
    target = sync.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "name", nargs="?", help="synced table (lakebase.gold.users) or lakehouse sync name"
    )
    target.add_argument("--all", action="store_true", help="sync every table of the spec")
    sync.add_argument("--full-refresh", action="store_true", help="rebuild from a full snapshot")
    sync.set_defaults(run=_sync)

    follow = commands.add_parser(
        "follow", help="follow a continuous table in the foreground (what the Dagster run runs)"
    )
    follow.add_argument("name", help="continuous synced table or lakehouse sync")
    follow.add_argument(
        "--max-seconds", type=float, metavar="S", help="stop (exit 0) after S seconds"
    )
    follow.set_defaults(run=_follow)

    enable = commands.add_parser(
        "enable-cdf", help="turn on the Change Data Feed of a Delta table (as written in the spec)"
    )
    enable.add_argument("source", help="three-part name under lake_root, or a path / URI")
    enable.set_defaults(run=_enable_cdf)

    verify = commands.add_parser(
        "verify", help="compare Postgres with Delta at the checkpoint (row count, content hash)"
    )
    verify.add_argument("name")
    verify.set_defaults(run=_verify)

    delete = commands.add_parser("delete", help="stop syncing a table (its state is removed)")
    delete.add_argument("name", help="synced table name (it may already be gone from the spec)")
    delete.add_argument("--drop-table", action="store_true", help="also drop the Postgres table")
    delete.set_defaults(run=_delete)

    status = commands.add_parser("status", help="state, versions and lag of synced tables")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true", help="print a JSON list of objects")
    status.set_defaults(run=_status)
    return parser


def _spec() -> Spec:
    return load_spec(settings.spec_path())


def _validate(args: argparse.Namespace) -> int:
    spec = _spec()
    failed = 0
    conn = None
    if os.environ.get(settings.ENV_PG_DSN) or os.environ.get(settings.ENV_DEV) == "1":
        try:
            conn = connect(settings.pg_dsn(), autocommit=True)
        except ReverseEtlError as exc:
            failed += 1
            print(f"FAIL Postgres: {_explain(exc)}")
    else:
        print(f"note: {settings.ENV_PG_DSN} is not set: the checks that need the server (roles) "
              "were skipped", file=sys.stderr)  # fmt: skip
    try:
        for table in spec.synced_tables:
            try:
                source = open_source(table.source_uri, storage_options=table.storage_options)
                columns = check_source(table, source)
                if conn is not None:
                    check_readers(conn, table)
            except ReverseEtlError as exc:
                failed += 1
                print(f"FAIL {table.name}: {_explain(exc)}")
                continue
            print(f"ok   {table.name}: {table.source} v{source.version}, {len(columns)} columns")
        if conn is not None:
            failed += _validate_lakehouse(spec, conn)
    finally:
        if conn is not None:
            conn.close()
    if failed:
        total = len(spec.synced_tables) + len(spec.lakehouse_syncs)
        print(f"{failed} of {total} synced table(s) / lakehouse sync(s) invalid", file=sys.stderr)
    return 1 if failed else 0


def _validate_lakehouse(spec: Spec, conn: psycopg.Connection) -> int:
    """Server checks of each lakehouse sync; the number that failed."""
    failed = 0
    for sync in spec.lakehouse_syncs:
        try:
            source = source_dsn(sync, settings.pg_dsn())
            if source == settings.pg_dsn():
                _, warnings = check_lakehouse(conn, sync)
            else:
                with connect(source, autocommit=True) as other:
                    _, warnings = check_lakehouse(other, sync)
        except Exception as exc:
            failure = _as_failure(exc)
            failed += 1
            print(f"FAIL {sync.name}: {_explain(failure)}")
            continue
        for warning in warnings:
            print(f"warn {warning}")
        print(f"ok   {sync.name}: lakehouse sync into {sync.target}")
    return failed


def _sync(args: argparse.Namespace) -> int:
    spec = _spec()
    sync = None if args.all else spec.lakehouse_sync(args.name)
    if sync is not None:
        return _sync_lakehouse([sync], full_refresh=args.full_refresh)
    tables = spec.synced_tables if args.all else (spec.table(args.name),)
    dsn = settings.pg_dsn()
    failed = (
        0
        if not args.all
        else _sync_lakehouse(list(spec.lakehouse_syncs), full_refresh=args.full_refresh)
    )
    for table in tables:
        try:
            progress = _progress_bar(table.name)
            try:
                result = sync_table(
                    table, dsn, full_refresh=args.full_refresh, on_progress=progress
                )
            finally:
                if progress is not None:
                    print(file=sys.stderr)
        except Exception as exc:
            failure = _as_failure(exc)
            failed += 1
            print(f"FAIL {table.name}: {_explain(failure)}", file=sys.stderr)
            continue
        print(_describe(result))
        _record_in_dagster(table, result, dsn)
    return 1 if failed else 0


def _record_in_dagster(table: SyncedTable, result: SyncResult, dsn: str) -> None:
    """With DAGSTER_HOME set, the sync appears in that Dagster instance as a materialization."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    # Imported here: only a configured instance makes the CLI load Dagster.
    from reverse_etl_assets.orchestration.events import record_cli_sync

    try:
        record_cli_sync(table, result, dsn)
    except Exception as exc:  # the sync itself succeeded; say why the UI will not show it
        print(f"WARN {table.name}: not recorded in the Dagster instance: {exc}", file=sys.stderr)


def _sync_lakehouse(syncs: list[LakehouseSync], *, full_refresh: bool) -> int:
    """Sync each lakehouse sync once; the number that failed."""
    failed = 0
    for sync in syncs:
        try:
            result = sync_lakehouse(sync, settings.pg_dsn(), full_refresh=full_refresh)
        except Exception as exc:
            failure = _as_failure(exc)
            failed += 1
            print(f"FAIL {sync.name}: {_explain(failure)}", file=sys.stderr)
            continue
        print(result.describe())
        _record_lakehouse_in_dagster(sync, result)
        for table, message in sorted(result.failed_tables.items()):
            print(f"FAIL {sync.name}: {table}: {message}", file=sys.stderr)
            failed += 1
    return failed


def _record_lakehouse_in_dagster(sync: LakehouseSync, result: LakehouseResult) -> None:
    """With DAGSTER_HOME set, each history and mirror the sync wrote appears in that Dagster
    instance as a materialization."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    from reverse_etl_assets.orchestration.lakehouse_events import record_cli_lakehouse_sync

    try:
        record_cli_lakehouse_sync(sync, result, settings.pg_dsn())
    except Exception as exc:  # the sync itself succeeded; say why the UI will not show it
        print(f"WARN {sync.name}: not recorded in the Dagster instance: {exc}", file=sys.stderr)


def _follow(args: argparse.Namespace) -> int:
    spec = _spec()
    sync = spec.lakehouse_sync(args.name)
    if sync is not None:
        return _follow_lakehouse(sync, args.max_seconds)
    table = spec.table(args.name)
    # Retries and reconnects are logged; each applied batch is printed on stdout.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    try:
        with stop_on_signals(stop):
            summary = follow_table(
                table,
                settings.pg_dsn(),
                max_seconds=args.max_seconds,
                stop=stop,
                on_sync=lambda result: print(_describe(result), flush=True),
            )
    except KeyboardInterrupt:
        print(f"stopped following {table.name} at once; a batch in flight was rolled back")
        return 0
    print(
        f"stopped following {table.name} at version {summary.version}: {summary.versions} "
        f"version(s) in {summary.batches} batch(es), {summary.reconnects} reconnect(s), "
        f"{summary.seconds:.0f}s"
    )
    return 0


def _follow_lakehouse(sync: LakehouseSync, max_seconds: float | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            summary = follow_lakehouse(
                sync,
                settings.pg_dsn(),
                max_seconds=max_seconds,
                stop=stop,
                on_flush=lambda result: print(result.describe(), flush=True),
            )
    except KeyboardInterrupt:
        print(f"stopped following {sync.name} at once; what was not landed comes again")
        return 0
    lsn = format_lsn(summary.last_lsn) if summary.last_lsn is not None else "-"
    print(
        f"stopped following {sync.name} at LSN {lsn}: {summary.changes:,} change(s) in "
        f"{summary.flushes} commit(s), {summary.reconnects} reconnect(s), {summary.seconds:.0f}s"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    spec = _spec()
    sync = spec.lakehouse_sync(args.name)
    if sync is not None:
        checks = verify_lakehouse(sync, settings.pg_dsn())
        for check in checks:
            print(check.describe())
        return 0 if all(c.content_matches for c in checks) else 1
    result = verify_table(spec.table(args.name), settings.pg_dsn())
    print(result.describe() + f" [{result.seconds:.2f}s]")
    return 0 if result.content_matches else 1


def _delete(args: argparse.Namespace) -> int:
    name = args.name
    sync = _spec().lakehouse_sync(name)
    if sync is not None:
        print(delete_lakehouse(sync, settings.pg_dsn(), drop_tables=args.drop_table))
        return 0
    if len(name.split(".")) != 3:
        raise SpecError(f"{name!r} is not a synced table name (<catalog>.<schema>.<table>)")
    print(delete_synced_table(name, settings.pg_dsn(), drop_table=args.drop_table))
    return 0


def _progress_bar(name: str) -> Progress | None:
    """A progress line on stderr, redrawn in place, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()

    def show(done: int, total: int | None) -> None:
        line = describe_progress(done, total, time.monotonic() - started, bar=True)
        print(f"\r{name}: {line}\033[K", end="", file=sys.stderr, flush=True)

    return show


def _describe(result: SyncResult) -> str:
    if result.path == "none":
        return f"{result.name}: already at version {result.version}, nothing to do"
    done = (
        f"{result.changes:,} changed keys applied"
        if result.path == "incremental"
        else f"{result.rows:,} rows copied ({result.rows_per_second:,.0f} rows/s)"
    )
    text = f"synced {result.name}: version {result.version}, {done} in {result.seconds:.2f}s"
    if result.skipped_null_keys:
        text += f", {result.skipped_null_keys} NULL-key rows skipped"
    if result.reason:
        text += f" [{result.reason}]"
    return text


def _enable_cdf(args: argparse.Namespace) -> int:
    spec = _spec()
    declared = [t for t in spec.synced_tables if t.source == args.source]
    options = declared[0].storage_options if declared else {}
    uri = resolve_source(args.source, lake_root=spec.lake_root, base_dir=spec.path.parent)
    enable_change_data_feed(uri, storage_options=options)
    print(f"Change Data Feed enabled on {args.source} ({uri}); changes from the next version on")
    return 0


def _status(args: argparse.Namespace) -> int:
    spec = _spec()
    sync = spec.lakehouse_sync(args.name) if args.name else None
    syncs = [sync] if sync is not None else ([] if args.name else list(spec.lakehouse_syncs))
    tables = () if sync is not None else (
        (spec.table(args.name),) if args.name else spec.synced_tables
    )  # fmt: skip
    with connect(settings.pg_dsn(), autocommit=True) as conn:
        state.ensure_state_table(conn)
        stored = {s.name: s for s in state.read_all_states(conn)}
    lakehouse = [read_lakehouse_status(s, settings.pg_dsn()) for s in syncs]
    rows = [table_status(t, stored.get(t.name)) for t in tables]
    if args.json:
        objects = [r.to_json() for r in rows] + [s.to_json() for s in lakehouse]
        print(json.dumps(objects, indent=2, default=str))
        return 0
    if rows:
        print(_format_table(rows))
    for status in lakehouse:
        print(_format_lakehouse(status))
    return 0


def _format_lakehouse(status: LakehouseStatus) -> str:
    lines = [
        f"lakehouse sync {status.name} ({status.mode}): {status.detailed_state}",
        f"  slot {status.slot}  last_lsn {_cell(status.last_lsn)}  lag_bytes "
        f"{_cell(status.lag_bytes)}  retained_wal_bytes {_cell(status.retained_wal_bytes)}  "
        f"lag_seconds {_cell(status.lag_seconds)}",
    ]
    if status.message:
        lines.append(f"  message: {status.message}")
    for table in status.tables:
        lines.append(
            f"  {table.table}: {table.detailed_state}  rows {_cell(table.rows)}  last_lsn "
            f"{_cell(table.last_lsn)}  mirror {_cell(table.mirror)}  history {_cell(table.history)}"
            + (f"  message: {table.message}" if table.message else "")
        )
    return "\n".join(lines)


def _format_table(rows: list[TableStatus]) -> str:
    cells = [[_cell(getattr(r, c)) for c in STATUS_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(STATUS_COLUMNS)]
    widths[-1] = len(STATUS_COLUMNS[-1])  # the message runs to the end of the line
    lines = ["  ".join(c.ljust(w) for c, w in zip(STATUS_COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
