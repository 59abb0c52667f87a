"""The Delta side: open a source, pin a version, stream its rows."""
