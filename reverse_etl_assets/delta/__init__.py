"""The Delta connector: open, pin and stream a table, read its log and Change Data Feed, write."""
