"""The Postgres side: connections, DDL, binary COPY, the swap and the state table."""
