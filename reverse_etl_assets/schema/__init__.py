"""The type maps, one per direction: Delta → Postgres, and Postgres → Arrow/Delta."""
