"""Arrow/polars transforms between the lake reader and the Postgres writer."""
