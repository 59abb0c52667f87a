"""What long-running pipelines share in either direction: the follower loop, backoff, progress."""
