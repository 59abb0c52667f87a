"""The Postgres connector: connect, catalog, binary COPY, swap, apply, protection, state, locks,
and `replication/` (slot, publication, pgoutput stream)."""
