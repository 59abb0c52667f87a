"""Synced tables, Delta → Postgres: snapshot, incremental, follow, verify, delete, status."""
