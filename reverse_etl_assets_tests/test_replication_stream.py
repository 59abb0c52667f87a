"""ReplicationStream against a real PostgreSQL 15 with wal_level = logical."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from reverse_etl_assets.errors import ReverseEtlError, TransientError
from reverse_etl_assets.postgres.replication.lsn import parse_lsn
from reverse_etl_assets.postgres.replication.messages import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    Truncate,
    Update,
)
from reverse_etl_assets.postgres.replication.problems import (
    PublicationMissing,
    SlotActive,
    SlotMissing,
)
from reverse_etl_assets.postgres.replication.stream import ReplicationStream, XLogData

SLOT = "reverse_etl_test"
PUB = "reverse_etl_test"


@pytest.fixture
def source(pg_dsn: str) -> Iterator[str]:
    """A database with table t(id pk, name), a publication for it and a slot made after it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [SLOT])
    try:
        yield pg_dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE active_pid IS NOT NULL"
            )
            for _ in range(50):
                if (
                    conn.execute(
                        "SELECT count(*) FROM pg_replication_slots WHERE active"
                    ).fetchone()[0]
                    == 0
                ):  # type: ignore[index]
                    break
                time.sleep(0.1)
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")


def run(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def read_until(stream: ReplicationStream, predicate: type, limit: float = 10.0) -> list[XLogData]:
    """Frames up to and including the first whose message is a `predicate` instance."""
    frames: list[XLogData] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        frame = stream.read(timeout=0.5)
        if frame is not None:
            frames.append(frame)
            if isinstance(frame.message, predicate):
                return frames
    raise AssertionError(f"no {predicate.__name__} within {limit}s; got {frames}")


def messages(frames: list[XLogData]) -> list[Message]:
    return [frame.message for frame in frames]


def test_reads_decoded_changes_with_transaction_lsns(source: str) -> None:
    run(
        source,
        "INSERT INTO t VALUES (1, 'a'), (2, NULL)",
    )
    run(source, "UPDATE t SET name = 'b' WHERE id = 1")
    run(source, "DELETE FROM t WHERE id = 2")
    run(source, "TRUNCATE t")
    run(source, "SELECT pg_logical_emit_message(true, 'wm', 'hello')")
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        first = messages(read_until(stream, Commit))
        begin, relation, ins1, ins2, commit = first
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert begin.final_lsn == commit.commit_lsn and commit.end_lsn > commit.commit_lsn
        assert begin.commit_time == commit.commit_time
        assert isinstance(relation, Relation)
        assert (relation.schema, relation.table, relation.replica_identity) == ("public", "t", "d")
        assert [(c.name, c.type_oid, c.is_key) for c in relation.columns] == [
            ("id", 23, True),
            ("name", 25, False),
        ]
        assert ins1 == Insert(relation_oid=relation.oid, new=(b"1", b"a"))
        assert ins2 == Insert(relation_oid=relation.oid, new=(b"2", None))

        update = messages(read_until(stream, Commit))[1]
        assert update == Update(
            relation_oid=relation.oid, old_kind=None, old=None, new=(b"1", b"b")
        )
        delete = messages(read_until(stream, Commit))[1]
        assert delete == Delete(relation_oid=relation.oid, old_kind="K", old=(b"2", None))
        # TRUNCATE invalidates the relation cache, so a Relation message comes again before it.
        truncate = messages(read_until(stream, Commit))[-2]
        assert truncate == Truncate(
            relation_oids=(relation.oid,), cascade=False, restart_identity=False
        )
        emitted = messages(read_until(stream, Commit))[1]
        assert isinstance(emitted, LogicalMessage)
        assert (emitted.prefix, emitted.content, emitted.transactional) == ("wm", b"hello", True)
        assert stream.server_wal_end >= commit.end_lsn


def test_resumes_after_the_acknowledged_position(source: str) -> None:
    run(source, "INSERT INTO t VALUES (1, 'a')")
    run(source, "INSERT INTO t VALUES (2, 'b')")
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        first_commit = read_until(stream, Commit)[-1].message
        assert isinstance(first_commit, Commit)
        second = messages(read_until(stream, Commit))
        assert Insert in {type(m) for m in second}
        # Acknowledge only the first transaction: the second must come again.
        stream.send_status(flush_lsn=first_commit.end_lsn)
        time.sleep(0.2)
    with psycopg.connect(source) as conn:
        confirmed = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            [SLOT],
        ).fetchone()
    assert confirmed is not None and parse_lsn(confirmed[0]) == first_commit.end_lsn
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        again = [m for m in messages(read_until(stream, Commit)) if isinstance(m, Insert)]
        assert [m.new for m in again] == [(b"2", b"b")]


def test_keepalive_never_advances_the_slot_past_the_acknowledgement(source: str) -> None:
    run(source, "INSERT INTO t VALUES (1, 'a')")
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        read_until(stream, Commit)
        # Unacknowledged: replies to keepalives must carry flush 0, not the server's WAL end.
        stream.send_status(flush_lsn=0, reply_requested=True)
        while stream.read(timeout=0.5) is not None:
            pass
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        assert any(isinstance(m, Insert) for m in messages(read_until(stream, Commit)))


def test_reply_request_reports_the_current_wal_position(source: str) -> None:
    run(source, "INSERT INTO t VALUES (1, 'a')")
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        read_until(stream, Commit)
        run(source, "CREATE TABLE unpublished (x int)", "INSERT INTO unpublished VALUES (1)")
        with psycopg.connect(source) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = parse_lsn(row[0])
        deadline = time.monotonic() + 10
        while stream.server_wal_end < target and time.monotonic() < deadline:
            stream.send_status(flush_lsn=0, reply_requested=True)
            assert stream.read(timeout=0.2) is None  # only unpublished changes: no data
        assert stream.server_wal_end >= target


def test_second_stream_on_the_slot_is_refused_with_the_pid(source: str) -> None:
    with ReplicationStream(source, slot=SLOT, publication=PUB) as stream:
        stream.read(timeout=0.2)
        with pytest.raises(
            SlotActive, match=rf"another follower is streaming from slot {SLOT} \(pid \d+\)"
        ) as info:
            ReplicationStream(source, slot=SLOT, publication=PUB)
        assert info.value.terminal and info.value.pid is not None


def test_missing_slot_is_terminal(source: str) -> None:
    with pytest.raises(SlotMissing, match="replication slot nope does not exist") as info:
        ReplicationStream(source, slot="nope", publication=PUB)
    assert info.value.terminal


def test_missing_publication_is_terminal(source: str) -> None:
    run(source, "INSERT INTO t VALUES (1, 'a')")
    with (
        ReplicationStream(source, slot=SLOT, publication="nopub") as stream,
        pytest.raises(PublicationMissing, match="publication nopub") as info,
    ):
        read_until(stream, Commit)
    assert info.value.terminal


def test_dropped_connection_is_transient_and_hides_the_password(source: str) -> None:
    secret_dsn = source + ("&" if "?" in source else " ") + "password=s3cr3t-pw"
    if "://" in source and "?" not in source:
        secret_dsn = source + "?password=s3cr3t-pw"
    with ReplicationStream(secret_dsn, slot=SLOT, publication=PUB) as stream:
        stream.read(timeout=0.2)
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                [SLOT],
            )
        with pytest.raises(TransientError) as info:
            for _ in range(40):
                stream.read(timeout=0.25)
    assert not info.value.terminal
    assert SLOT in str(info.value) and "s3cr3t-pw" not in str(info.value)
    assert isinstance(info.value, ReverseEtlError)


def test_status_is_sent_by_itself_while_reading(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverse_etl_assets.postgres.replication import stream as stream_module

    monkeypatch.setattr(stream_module, "STATUS_INTERVAL_S", 0.2)
    with ReplicationStream(
        source, slot=SLOT, publication=PUB, application_name="status_probe"
    ) as stream:
        stream.read(timeout=1.0)
        with psycopg.connect(source) as conn:
            row = conn.execute(
                "SELECT reply_time FROM pg_stat_replication WHERE application_name = 'status_probe'"
            ).fetchone()
    assert row is not None and row[0] is not None
