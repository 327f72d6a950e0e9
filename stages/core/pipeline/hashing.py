"""Process-stable hashes of ids: which shard a group belongs to, and the seed of each sample."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of stable ids, the same in every process (Python's ``hash()`` is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from stable ids (run seed, problem id, sample index), so resumed work reproduces its
    samples."""
    return stable_hash(*parts) & ((1 << 63) - 1)
