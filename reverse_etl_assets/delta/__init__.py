"""Delta Lake connector: read and write Delta tables with delta-rs."""
