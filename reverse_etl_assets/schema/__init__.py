"""The type maps, one per direction."""
