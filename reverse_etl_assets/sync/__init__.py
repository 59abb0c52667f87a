"""One synced table end to end: the algorithms that call lake, transform and postgres."""
