"""Opaque ids that sort by creation time (ULID-style), so newest-first is ORDER BY id."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32(millis, 10)}{_b32(rand, 16)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ids in creation order (one timestamp, consecutive random parts)."""
    millis = time.time_ns() // 1_000_000
    base = int.from_bytes(os.urandom(10), "big") >> 8  # headroom for the increments
    return [f"{prefix}_{_b32(millis, 10)}{_b32(base + i, 16)}" for i in range(count)]
