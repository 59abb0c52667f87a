"""Row counts and 64-bit row-hash sums per key bucket: an order-independent fingerprint of a
table that a stream of batches builds in bounded memory, and that says where two tables differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HASH_MODULUS = 2**64


@dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """Row count and the sum of the rows' hashes modulo 2**64 (order-independent)."""

    rows: int
    total: int

    def hex(self) -> str:
        """The sum as 16 hex digits."""
        return f"{self.total:016x}"


class BucketFingerprints:
    """Row count and hash sum per bucket (a key hash's low bits), summed batch by batch."""

    def __init__(self, buckets: int) -> None:
        if buckets & (buckets - 1):
            raise ValueError(f"the bucket count must be a power of two, not {buckets}")
        self.buckets = buckets
        self.counts = np.zeros(buckets, dtype=np.int64)
        self.sums = np.zeros(buckets, dtype=np.uint64)

    def bucket_of(self, key_hashes: np.ndarray) -> np.ndarray:
        """The bucket of each key hash."""
        return (key_hashes & np.uint64(self.buckets - 1)).astype(np.intp)

    def add(self, key_hashes: np.ndarray, row_hashes: np.ndarray) -> None:
        """Count rows into their buckets; sums wrap modulo 2**64."""
        buckets = self.bucket_of(key_hashes)
        self.counts += np.bincount(buckets, minlength=self.buckets)
        np.add.at(self.sums, buckets, row_hashes)

    def bucket(self, index: int) -> Fingerprint:
        """One bucket's fingerprint."""
        return Fingerprint(rows=int(self.counts[index]), total=int(self.sums[index]))

    def total(self) -> Fingerprint:
        """The whole table's fingerprint."""
        return Fingerprint(
            rows=int(self.counts.sum()), total=int(self.sums.sum(dtype=np.uint64)) % HASH_MODULUS
        )

    def differing(self, other: BucketFingerprints, *, limit: int) -> list[int]:
        """The first `limit` buckets whose fingerprints differ from `other`'s."""
        found = np.flatnonzero((self.counts != other.counts) | (self.sums != other.sums))
        return [int(b) for b in found[:limit]]
