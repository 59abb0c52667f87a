"""Development tools: the embedded PostgreSQL cluster and the demo Delta Lake."""
