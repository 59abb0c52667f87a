"""Lakehouse syncs, Postgres → Delta: initial snapshot, stream, drain, follow, verify, delete,
status."""
