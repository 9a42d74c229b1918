"""The Recommendation message (DESIGN §3): encode for the output topic, decode for readers."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from learner.types import UserRecommendation

__all__ = ["decode_recommendation", "encode_recommendation"]

SCHEMA_VERSION = 1


def encode_recommendation(rec: UserRecommendation, generated_ts: int | None = None) -> bytes:
    """The contract's msgpack map; ``generated_ts`` defaults to now (ms).

    Examples
    --------
    >>> from learner.types import ScoredItem
    >>> rec = UserRecommendation("u1", [ScoredItem("i1", 0.5, "i0")], "personal", "m/1", 7)
    >>> msg = decode_recommendation(encode_recommendation(rec, generated_ts=9))
    >>> msg["items"], msg["strategy"], msg["generated_ts"]
    ([{'item_id': 'i1', 'score': 0.5, 'because': 'i0'}], 'personal', 9)
    """
    now = int(time.time() * 1000) if generated_ts is None else generated_ts
    return bytes(
        msgpack.packb(
            {
                "v": SCHEMA_VERSION,
                "user_id": rec.user_id,
                "items": [
                    {"item_id": it.item_id, "score": float(it.score), "because": it.because}
                    for it in rec.items
                ],
                "strategy": rec.strategy,
                "model_version": rec.model_version,
                "event_ts": rec.event_ts,
                "generated_ts": now,
            }
        )
    )


def decode_recommendation(value: bytes) -> dict[str, Any]:
    """Decode a Recommendation message into a plain dict (for readers and tests)."""
    obj = msgpack.unpackb(value, raw=False)
    if not isinstance(obj, dict) or obj.get("v") != SCHEMA_VERSION:
        raise ValueError("not a v1 recommendation message")
    return obj
