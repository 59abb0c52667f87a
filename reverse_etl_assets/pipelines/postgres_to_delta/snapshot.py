"""The initial snapshot of a lakehouse sync: create the publication and the slot, copy every
table from the slot's exported snapshot into its mirror and history, stamped with the slot's
consistent point, so that every later change arrives through the stream and none before it."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pyarrow as pa

from reverse_etl_assets.delta import writer
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.pipelines.postgres_to_delta.stream import app_id
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.postgres.replication.snapshot_copy import copy_batches, table_partitions
from reverse_etl_assets.schema.postgres_to_delta import arrow_schema
from reverse_etl_assets.spec import LakehouseSync
from reverse_etl_assets.transform.lakehouse_changes import (
    CHANGE_TYPE,
    COMMIT_TIME,
    LSN,
    SEQ,
    XID,
)

# Connections that copy one table at once (TID ranges), measured: 2 beat 1 by ~25% on 2 cores.
COPY_CONNECTIONS = 2
_QUEUE_BATCHES = 4
_UTC_US = pa.timestamp("us", tz="UTC")


def resolve_tables(conn: psycopg.Connection, sync: LakehouseSync) -> list[slots.TableInfo]:
    """The tables the sync streams (its `tables`, and every table of its `schemas`), with their
    columns and keys; a named table that does not exist is a SpecError."""
    found: dict[tuple[str, str], slots.TableInfo] = {}
    for schema, table in sync.tables:
        info = slots.table_columns(conn, schema, table)
        if info is None:
            raise SpecError(
                f"lakehouse sync {sync.name!r}: table {schema}.{table} does not exist in the "
                "source database; create it or remove it from `tables`"
            )
        found[(schema, table)] = info
    for schema in sync.schemas:
        rows = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            (schema,),
        ).fetchall()
        for (table,) in rows:
            info = slots.table_columns(conn, schema, table)
            if info is not None:
                found[(schema, table)] = info
    _check_locations(sync, list(found))
    return list(found.values())


def take_snapshot(
    sync: LakehouseSync, dsn: str, tables: list[slots.TableInfo]
) -> tuple[int, dict[str, int]]:
    """Create publication and slot, land every table; the slot's consistent point and the rows
    copied per table. An existing slot or publication of the same name is replaced."""
    with connect(dsn, autocommit=True) as conn:
        if slots.slot_info(conn, sync.slot) is not None:
            slots.drop_slot(conn, sync.slot)
        slots.drop_publication(conn, sync.publication)
        slots.create_publication(
            conn, sync.publication, tables=list(sync.tables), schemas=list(sync.schemas)
        )
    rows: dict[str, int] = {}
    taken_at = datetime.now(UTC)
    with slots.create_slot(dsn, sync.slot) as exported:
        for info in tables:
            rows[f"{info.schema}.{info.table}"] = _copy_table(
                sync, dsn, info, exported.snapshot_name, exported.consistent_point, taken_at
            )
        return exported.consistent_point, rows


def _copy_table(
    sync: LakehouseSync,
    dsn: str,
    info: slots.TableInfo,
    snapshot_name: str,
    lsn: int,
    taken_at: datetime,
) -> int:
    schema = arrow_schema(info.columns)
    counted = _Counter()
    source = counted.wrap(_parallel_batches(dsn, snapshot_name, info))
    options = sync.storage_options
    writes: list[tuple[str, bool, Callable[[pa.RecordBatchReader], pa.RecordBatchReader]]] = []
    if sync.mirror and info.primary_key:
        writes.append((sync.mirror_uri(info.table), True, lambda reader: reader))
    if sync.history:
        writes.append(
            (
                sync.history_uri(info.table),
                False,
                lambda reader: _with_snapshot_columns(reader, lsn=lsn, taken_at=taken_at),
            )
        )

    def write(uri: str, cdf: bool, shape: Callable[[pa.RecordBatchReader], pa.RecordBatchReader]):
        return lambda reader: writer.write_snapshot(
            uri, shape(reader), app_id=app_id(sync), version=lsn, change_data_feed=cdf,
            storage_options=options,
        )  # fmt: skip

    # Mirror and history are written from one read of the table, side by side: each Delta
    # writer takes the same batches from a short queue of its own (bounded memory).
    fan_out(source, schema, [write(uri, cdf, shape) for uri, cdf, shape in writes])
    return counted.rows


def fan_out(
    source: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    sinks: list[Callable[[pa.RecordBatchReader], object]],
) -> None:
    """Feed every batch of `source` to each sink's reader, the sinks running side by side in
    threads; the first error (of the source or a sink) stops all and is raised."""
    if len(sinks) == 1:
        sinks[0](pa.RecordBatchReader.from_batches(schema, source))
        return
    stop = threading.Event()
    queues: list[queue.Queue[object]] = [queue.Queue(maxsize=_QUEUE_BATCHES) for _ in sinks]
    errors: list[BaseException] = []
    end = object()

    def batches(q: queue.Queue[object]) -> Iterator[pa.RecordBatch]:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.RecordBatch)
            yield item

    def run(sink: Callable[[pa.RecordBatchReader], object], q: queue.Queue[object]) -> None:
        try:
            sink(pa.RecordBatchReader.from_batches(schema, batches(q)))
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            while True:  # keep the producer from blocking on this sink's full queue
                with contextlib.suppress(queue.Empty):
                    if q.get(timeout=0.1) is end:
                        return

    threads = [
        threading.Thread(target=run, args=(sink, q), daemon=True)
        for sink, q in zip(sinks, queues, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        for batch in source:
            for q in queues:
                _put(q, batch, stop)
            if stop.is_set():
                break
    except BaseException as exc:
        errors.append(exc)
    finally:
        # A sink must never commit a partial table: after any error the others get one too.
        failed = bool(errors) or stop.is_set()
        for q in queues:
            if failed:
                _put(q, RuntimeError("the snapshot of this table stopped on an error"), None)
            _put(q, end, None)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def _put(q: queue.Queue[object], item: object, stop: threading.Event | None) -> None:
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop is not None and stop.is_set():
                return


def _with_snapshot_columns(
    reader: pa.RecordBatchReader, *, lsn: int, taken_at: datetime
) -> pa.RecordBatchReader:
    """The snapshot's rows as history rows: `insert`s at the snapshot's LSN."""
    schema = reader.schema
    for field in (
        pa.field(CHANGE_TYPE, pa.string()),
        pa.field(LSN, pa.int64()),
        pa.field(SEQ, pa.int32()),
        pa.field(XID, pa.int64()),
        pa.field(COMMIT_TIME, _UTC_US),
    ):
        schema = schema.append(field)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            n = batch.num_rows
            extra = [
                pa.array(["insert"] * n, pa.string()),
                pa.array([lsn] * n, pa.int64()),
                pa.array([0] * n, pa.int32()),
                pa.nulls(n, pa.int64()),
                pa.array([taken_at] * n, _UTC_US),
            ]
            yield pa.RecordBatch.from_arrays([*batch.columns, *extra], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _parallel_batches(
    dsn: str, snapshot_name: str, info: slots.TableInfo
) -> Iterator[pa.RecordBatch]:
    """The table's rows, read over TID ranges by several connections at once."""
    with connect(dsn) as conn:
        parts = table_partitions(conn, info.schema, info.table, parts=COPY_CONNECTIONS)
    done = object()
    results: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_BATCHES)
    stop = threading.Event()

    def read(where: str | None) -> None:
        try:
            for batch in copy_batches(
                dsn, snapshot_name=snapshot_name, schema=info.schema, table=info.table,
                columns=info.columns, where=where,
            ):  # fmt: skip
                if stop.is_set():
                    return
                results.put(batch)
        except BaseException as exc:  # handed to the consumer, which raises it
            results.put(exc)
        finally:
            results.put(done)

    threads = [threading.Thread(target=read, args=(where,), daemon=True) for where in parts]
    for thread in threads:
        thread.start()
    finished = 0
    try:
        while finished < len(threads):
            item = results.get()
            if item is done:
                finished += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                assert isinstance(item, pa.RecordBatch)
                yield item
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.1)


class _Counter:
    """Counts the rows that pass through a batch iterator."""

    def __init__(self) -> None:
        self.rows = 0

    def wrap(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.rows += batch.num_rows
            yield batch


def _check_locations(sync: LakehouseSync, tables: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for schema, table in tables:
        if table in seen:
            raise SpecError(
                f"lakehouse sync {sync.name!r}: {schema}.{table} and {seen[table]}.{table} would "
                "land at one Delta location; stream them with two lakehouse syncs of different "
                "`target`s"
            )
        seen[table] = schema
