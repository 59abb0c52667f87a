"""The lakehouse sync's engine: read the slot, keep whole transactions, land them in Delta,
acknowledge.

Each Delta commit carries the commit LSN of the last source transaction it holds; a session skips
what a table already has, so a crash anywhere lands every change exactly once. The slot is
acknowledged only up to what every table has committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.delta import sql_literals, writer
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.pipelines.postgres_to_delta.changes import Stamp, TableChanges
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.postgres.replication.messages import (
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Truncate,
    Update,
)
from reverse_etl_assets.postgres.replication.session import SESSION_OPTIONS
from reverse_etl_assets.postgres.replication.stream import ReplicationStream
from reverse_etl_assets.schema.postgres_to_delta import arrow_type, cast_column
from reverse_etl_assets.spec import LakehouseSync
from reverse_etl_assets.transform.lakehouse_changes import (
    LSN,
    MirrorChanges,
    fill_unchanged,
    history_rows,
    mirror_changes,
    table_columns,
    unchanged_columns,
    unfilled_keys,
    with_older_rows,
    with_untouched_rows,
)

log = logging.getLogger(__name__)

# A batch this large is landed without waiting for the flush interval (rows of all tables).
MAX_BATCH_ROWS = 200_000
READ_TIMEOUT_SECONDS = 0.2


def app_id(sync: LakehouseSync) -> str:
    """The Delta application id under which each commit records its source LSN."""
    return f"reverse_etl/{sync.slot}"


class TableFailed(ReverseEtlError):
    """One table cannot go on (a type Delta cannot widen, a value it cannot hold); the others do."""


@dataclass
class Flushed:
    """What one flush landed."""

    rows: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)  # "schema.table" -> by type
    tables: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    last_lsn: int | None = None
    last_commit_time: datetime | None = None


@dataclass
class Batch:
    """Whole transactions taken from a stream, to be landed and then acknowledged."""

    tables: dict[tuple[str, str], TableChanges] = field(default_factory=dict)
    end_lsn: int | None = None
    last_commit: Commit | None = None
    failed: dict[str, str] = field(default_factory=dict)


class ChangeStream:
    """One session on the slot: receive, buffer whole transactions, flush to Delta, acknowledge."""

    def __init__(
        self,
        sync: LakehouseSync,
        dsn: str,
        *,
        failed_tables: dict[str, str],
        application_name: str = "reverse_etl lakehouse",
        on_acknowledge: Callable[[int], None] | None = None,
    ) -> None:
        self.sync = sync
        self.on_acknowledge = on_acknowledge
        self.dsn = dsn
        self.failed = dict(failed_tables)
        self.new_failures: dict[str, str] = {}
        # Pinned text forms: it reads the values older rows hold for an added column
        # (`older_row_values`), which must print as the stream's own values do.
        self.catalog = connect(dsn, autocommit=True, options=SESSION_OPTIONS)
        try:
            self.stream = ReplicationStream(
                dsn, slot=sync.slot, publication=sync.publication, application_name=application_name
            )
        except BaseException:
            self.catalog.close()  # never leave a session behind a failed start
            raise
        self.relations: dict[int, Relation] = {}
        self.keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self.pending: dict[tuple[str, str], TableChanges] = {}
        self.versions: dict[str, int] = {}
        self.mirror_columns: dict[str, set[str]] = {}  # per mirror URI, as far as known
        self.txn: Begin | None = None
        self.seq = 0
        self.pending_rows = 0
        self.first_pending_at: float | None = None
        self.last_end_lsn: int | None = None
        self.last_commit: Commit | None = None
        self.acked: int = 0

    def close(self) -> None:
        """Close the replication and catalog connections."""
        try:
            self.stream.close()
        finally:
            self.catalog.close()

    @property
    def in_transaction(self) -> bool:
        """Whether a source transaction is half received."""
        return self.txn is not None

    @property
    def has_pending(self) -> bool:
        """Whether whole transactions wait to be landed."""
        return self.last_end_lsn is not None and self.last_end_lsn > self.acked

    def flush_due(self, interval: float) -> bool:
        """Whether pending transactions have waited `interval` seconds, or the batch is large."""
        if not self.has_pending or self.in_transaction:
            return False
        if self.pending_rows >= MAX_BATCH_ROWS:
            return True
        return self.first_pending_at is not None and (
            time.monotonic() - self.first_pending_at >= interval
        )

    def receive(self, seconds: float) -> int:
        """Read messages for up to `seconds` (or until a large batch is whole); messages read."""
        deadline = time.monotonic() + seconds
        count = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return count
            data = self.stream.read(min(left, READ_TIMEOUT_SECONDS))
            if data is None:
                continue
            count += 1
            committed = self._handle(data.message)
            if committed and self.pending_rows >= MAX_BATCH_ROWS:
                return count

    def flush(self) -> Flushed:
        """Land every whole transaction received, then acknowledge them."""
        batch = self.take()
        result = self.land(batch)
        if batch.end_lsn is not None:
            self.acknowledge(batch.end_lsn)
        return result

    def take(self) -> Batch:
        """Detach the whole transactions received so far, to be landed (maybe in another
        thread, while this stream receives the next ones) and then acknowledged."""
        batch = Batch(failed=self.new_failures)
        self.new_failures = {}
        if self.last_end_lsn is None or self.in_transaction:
            return batch
        batch.tables = self.pending
        batch.end_lsn = self.last_end_lsn
        batch.last_commit = self.last_commit
        self.pending = {}
        self.pending_rows = 0
        self.first_pending_at = None
        return batch

    def land(self, batch: Batch) -> Flushed:
        """Write a batch to Delta: each table's history and mirror, skipping what they hold.
        Touches only Delta and the catalog connection, so it may run beside `receive`."""
        result = Flushed(failed=dict(batch.failed))
        for (schema, table), changes in batch.tables.items():
            label = f"{schema}.{table}"
            if label in self.failed:
                continue
            try:
                landed = self._land(schema, table, changes)
            except (TableFailed, writer.SchemaConflictError) as exc:
                message = self._failure(label, exc)
                result.failed[label] = self.failed[label] = message
                log.error("%s: %s: %s", self.sync.name, label, message)
                continue
            if landed is not None:
                result.rows += landed.num_rows
                counts = _count_types(landed)
                result.by_table[label] = counts
                for kind, count in counts.items():
                    result.by_type[kind] = result.by_type.get(kind, 0) + count
                result.tables.append(label)
        if batch.last_commit is not None:
            result.last_lsn = batch.last_commit.commit_lsn
            result.last_commit_time = batch.last_commit.commit_time
        return result

    def _failure(self, label: str, exc: Exception) -> str:
        """Why table `label` stops. The writer knows the Delta table only: its message gets the
        sync, the Postgres table and the exact command."""
        if not isinstance(exc, writer.SchemaConflictError):
            return str(exc)
        hint = f"`reverse-etl sync {self.sync.name} --full-refresh`"
        detail = str(exc).replace(writer.FULL_REFRESH_HINT, f"run {hint}")
        return (
            f"lakehouse sync {self.sync.name!r}: {label}: {detail}; this table stops here (the "
            "others go on)"
        )

    def acknowledge(self, lsn: int) -> None:
        """Tell the server everything up to `lsn` is safe in Delta (it may recycle that WAL);
        `on_acknowledge` hears of a new position first."""
        if lsn > self.acked:
            if self.on_acknowledge is not None:
                self.on_acknowledge(lsn)
            self.acked = lsn
        self.stream.send_status(flush_lsn=self.acked)

    def acknowledge_idle(self) -> None:
        """With nothing pending or half received, confirm the server's position so an idle
        slot does not hold WAL written by other databases or unpublished tables."""
        if not self.in_transaction and not self.pending and self.stream.server_wal_end:
            self.acknowledge(self.stream.server_wal_end)

    def request_position(self) -> None:
        """Ask the server to send its position now (a keepalive), to learn we caught up."""
        self.stream.send_status(flush_lsn=self.acked, reply_requested=True)

    # Messages.

    def _handle(self, message: object) -> bool:
        """Take one message; True when it completed a transaction."""
        if isinstance(message, Begin):
            self.txn = message
            self.seq = 0
            return False
        if isinstance(message, Commit):
            self.txn = None
            self.last_end_lsn = message.end_lsn
            self.last_commit = message
            if self.first_pending_at is None and self.pending:
                self.first_pending_at = time.monotonic()
            return True
        if isinstance(message, Relation):
            self._relation(message)
            return False
        if isinstance(message, Insert | Update | Delete | Truncate):
            self._change(message)
        return False

    def _relation(self, relation: Relation) -> None:
        label = f"{relation.schema}.{relation.table}"
        previous = self.relations.get(relation.oid)
        self.relations[relation.oid] = relation
        if previous is None or label in self.failed:
            return
        before = {c.name: arrow_type(c) for c in previous.columns}
        for column in relation.columns:
            old = before.get(column.name)
            new = arrow_type(column)
            # A narrower type (bigint to int) still lands in the Delta column as it is, as when a
            # later session meets the change in Delta's schema; only a wider or other one stops.
            if old is not None and not writer.fits(new, old):
                message = (
                    f"lakehouse sync {self.sync.name!r}: column {column.name!r} of {label} changed "
                    f"type ({old} to {new}) and Delta cannot widen it; this table stops here (the "
                    f"others go on). Rebuild it with `reverse-etl sync {self.sync.name} "
                    "--full-refresh`"
                )
                self.failed[label] = self.new_failures[label] = message
                self.pending.pop((relation.schema, relation.table), None)
                log.error("%s", message)
                return

    def _change(self, message: Insert | Update | Delete | Truncate) -> None:
        assert self.txn is not None, "a change outside a transaction"
        self.seq += 1
        stamp = Stamp(
            lsn=self.txn.final_lsn,
            seq=self.seq,
            xid=self.txn.xid,
            commit_time=self.txn.commit_time,
        )
        if isinstance(message, Truncate):
            for oid in message.relation_oids:
                relation = self.relations[oid]
                changes = self._changes_of(relation)
                if changes is not None:
                    changes.add_truncate(relation, stamp)
                    self.pending_rows += 1
            return
        relation = self.relations[message.relation_oid]
        changes = self._changes_of(relation)
        if changes is None:
            return
        if isinstance(message, Insert):
            changes.add_insert(relation, message.new, stamp)
        elif isinstance(message, Update):
            changes.add_update(relation, message.old, message.new, stamp)
        else:
            changes.add_delete(relation, message.old, stamp)
        self.pending_rows += 1

    def _changes_of(self, relation: Relation) -> TableChanges | None:
        key = (relation.schema, relation.table)
        if self.failed and f"{relation.schema}.{relation.table}" in self.failed:
            return None
        if key not in self.pending:
            self.pending[key] = TableChanges(schema=relation.schema, table=relation.table)
        return self.pending[key]

    # Landing.

    def _land(self, schema: str, table: str, changes: TableChanges) -> pa.Table | None:
        """Write one table's changes to its history and mirror, skipping what each holds."""
        try:
            frame = changes.to_arrow()
        except ReverseEtlError as exc:
            raise TableFailed(
                f"lakehouse sync {self.sync.name!r}: {schema}.{table} near LSN "
                f"{changes.last_lsn}: {exc}. Fix the value in Postgres or change the column's "
                f"type, then run `reverse-etl sync {self.sync.name} --full-refresh`"
            ) from exc
        keys = self._keys(schema, table)
        version = changes.last_lsn
        landed: pa.Table | None = None
        mirror_uri = self.sync.mirror_uri(table)
        prior = None
        if keys and self.sync.mirror:
            unfilled = unfilled_keys(frame, keys)
            if unfilled.num_rows:  # unchanged TOAST values the batch itself cannot fill
                # The mirror's values of exactly the columns left unsent: without them the
                # prior rows carry keys only and nothing gets filled.
                prior = writer.lookup_rows(
                    mirror_uri, keys, unfilled, columns=unchanged_columns(frame),
                    storage_options=self.sync.storage_options,
                )  # fmt: skip
        # The mirror may hold some of these transactions already (a replay after a crash): its
        # rows are current as of its version, so they count from there on.
        prior_lsn = self._version(mirror_uri) if prior is not None else None
        filled = fill_unchanged(frame, keys, prior=prior, prior_lsn=prior_lsn) if keys else frame
        if self.sync.history:
            uri = self.sync.history_uri(table)
            rows = self._new_rows(uri, filled)
            if rows.num_rows:
                writer.append_changes(
                    uri,
                    history_rows(rows),
                    app_id=app_id(self.sync),
                    version=version,
                    storage_options=self.sync.storage_options,
                )
                self.versions[uri] = version
                landed = rows
        if self.sync.mirror and keys:
            rows = self._new_rows(mirror_uri, filled)
            if rows.num_rows:
                writer.merge_changes(
                    mirror_uri,
                    self._mirror_changes(schema, table, changes, rows, keys),
                    key_columns=keys,
                    app_id=app_id(self.sync),
                    version=version,
                    storage_options=self.sync.storage_options,
                )
                self.versions[mirror_uri] = version
                landed = landed if landed is not None else rows
        return landed

    def _mirror_changes(
        self, schema: str, table: str, changes: TableChanges, rows: pa.Table, keys: tuple[str, ...]
    ) -> MirrorChanges:
        """The MERGE input for the mirror. A column added with a DEFAULT since the mirror's last
        commit reads that default in Postgres for every older row: the changes made before the
        column existed, and the mirror rows the batch does not touch, get it too (the MERGE sets
        it on the rows it does not match, without reading them first)."""
        uri = self.sync.mirror_uri(table)
        options = self.sync.storage_options
        if uri not in self.mirror_columns:
            settled = writer.settled_columns(uri, storage_options=options)
            self.mirror_columns[uri] = settled or set()
        known = self.mirror_columns[uri]
        new = [c for c in table_columns(rows) if known and c not in known]
        known.update(table_columns(rows))
        older = slots.older_row_values(self.catalog, schema, table, new) if new else {}
        positions = {c: changes.first_with(c) for c in older}
        since = {c: p for c, p in positions.items() if p is not None}
        try:
            values = {
                c: cast_column(_column(changes, c), pa.array([older[c]], pa.binary()))[0]
                for c in since
            }
        except ReverseEtlError as exc:  # a DEFAULT Delta cannot hold, which older rows read
            raise TableFailed(
                f"lakehouse sync {self.sync.name!r}: {schema}.{table}: rows older than an added "
                f"column read its DEFAULT: {exc}. Fix the value in Postgres or change the "
                f"column's type, then run `reverse-etl sync {self.sync.name} --full-refresh`"
            ) from exc
        if not values:
            return mirror_changes(rows, keys)
        merged = mirror_changes(with_older_rows(rows, values, since), keys)
        if merged.clear_first:
            return merged  # every older row is gone
        constants = {c: sql_literals.literal(v) for c, v in values.items()}
        if all(constants.values()):  # set by the MERGE itself on the rows it does not match
            return replace(merged, untouched=tuple((c, v) for c, v in constants.items() if v))
        # A value no SQL literal states here (an array): a `fill` row for every mirror key.
        return with_untouched_rows(
            merged, writer.read_keys(uri, keys, storage_options=options), values
        )

    def _new_rows(self, uri: str, frame: pa.Table) -> pa.Table:
        """The rows of `frame` from transactions the Delta table at `uri` does not hold yet."""
        return frame.filter(pc.greater(frame[LSN], self._version(uri)))

    def _version(self, uri: str) -> int:
        """The commit LSN of the last source transaction the Delta table at `uri` holds (-1:
        none)."""
        if uri not in self.versions:
            stored = writer.transaction_version(
                uri, app_id(self.sync), storage_options=self.sync.storage_options
            )
            self.versions[uri] = -1 if stored is None else stored
        return self.versions[uri]

    def _keys(self, schema: str, table: str) -> tuple[str, ...]:
        if (schema, table) not in self.keys:
            info = slots.table_columns(self.catalog, schema, table)
            self.keys[(schema, table)] = info.primary_key if info is not None else ()
        return self.keys[(schema, table)]


def _column(changes: TableChanges, name: str) -> RelationColumn:
    """The column `name` as the latest shape of the table's changes describes it."""
    return next(c for c in changes.segments[-1].relation.columns if c.name == name)


def _count_types(frame: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(frame["_pg_change_type"]).to_pylist()
    return {item["values"]: item["counts"] for item in counts}
