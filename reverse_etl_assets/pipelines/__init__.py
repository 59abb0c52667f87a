"""The algorithms that move data, one package per direction; they call the connectors."""
