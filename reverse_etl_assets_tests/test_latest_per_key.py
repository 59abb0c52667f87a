"""The latest row per key, settled from spilled partition files, equals settling all at once."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl

from reverse_etl_assets.transform.buckets import BucketFingerprints
from reverse_etl_assets.transform.latest_per_key import LatestPerKey, keep_latest


def random_frames(seed: int) -> list[pl.DataFrame]:
    """Frames of (k, t, h): keys spread over the whole 64-bit range (every partition), several
    rows a key across frames, tied and NULL timestamps."""
    rng = random.Random(seed)
    keys = [rng.getrandbits(64) for _ in range(3_000)]
    frames = []
    for _ in range(7):
        n = rng.randint(0, 2_000)
        frames.append(
            pl.DataFrame(
                {
                    "k": pl.Series([rng.choice(keys) for _ in range(n)], dtype=pl.UInt64),
                    "t": pl.Series(
                        [None if rng.random() < 0.05 else rng.randint(0, 20) for _ in range(n)],
                        dtype=pl.Int64,
                    ),
                    "h": pl.Series([rng.getrandbits(64) for _ in range(n)], dtype=pl.UInt64),
                }
            )
        )
    return frames


def test_spilled_partitions_settle_as_the_whole_stream_does() -> None:
    for seed in range(3):
        frames = random_frames(seed)
        whole = keep_latest(pl.concat(frames))
        expected = BucketFingerprints(4096)
        expected.add(whole["k"].to_numpy(), whole["h"].to_numpy())
        with LatestPerKey() as latest:
            for frame in frames:
                latest.add(frame)
            spill = Path(latest._dir.name)
            assert len(list(spill.glob("*.arrow"))) > 32  # spread over the partitions
            found = latest.buckets(4096)
        assert not spill.exists()  # the files go with it
        assert np.array_equal(found.counts, expected.counts)
        assert np.array_equal(found.sums, expected.sums)
        assert found.total().rows == whole.height


def test_nothing_added_is_an_empty_fingerprint() -> None:
    with LatestPerKey() as latest:
        latest.add(pl.DataFrame({"k": [], "t": [], "h": []}))
        assert latest.buckets(16).total().rows == 0
