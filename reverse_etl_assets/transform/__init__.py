"""Arrow/polars transforms between a read connector and a write connector: cleaning, net changes."""
