"""Logical replication from Postgres: slot and publication, the pgoutput stream, its messages."""
