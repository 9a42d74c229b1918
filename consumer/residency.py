"""Which users live in memory: a bounded, least-recently-used set, with the rest in a local
on-disk store materialised from the state changelog (DESIGN §5).

A worker owning many partitions can have far more users than it should hold in memory. With
``--max-users-in-memory N`` (and optionally ``--idle-user-ttl-s``) the users restored for an
assigned partition go to a local SQLite file rather than into memory; a user is loaded from it
on their next event, and users beyond ``N`` or idle past the TTL are written back to it and
dropped from memory once their batch is committed. The file is a cache of the changelog, which
stays the truth: it is rebuilt from the changelog whenever a partition is assigned, so wiping
it loses nothing.

Examples
--------
>>> import numpy as np
>>> store = LocalStateStore(":memory:")
>>> snap = UserSnapshot("u1", np.zeros(2, "<f4").tobytes(), 0, 1, ())
>>> store.put([(snap, 3)]); store.get(["u1", "u2"])[0][0].user_id, len(store)
('u1', 1)
>>> store.forget_partitions([3]); len(store)
0
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from consumer.changelog import decode_state, encode_state
from learner.recommender import Recommender
from learner.user_state import UserSnapshot

__all__ = ["LocalStateStore", "Residency"]

log = logging.getLogger(__name__)


class LocalStateStore:
    """Users' state records by user id, with their partition, in one SQLite file.

    Durability does not matter here (the changelog is the truth), so writes are unsynced.
    """

    def __init__(self, path: str | Path, *, remove_dir: bool = False) -> None:
        self.path = str(path)
        self.remove_dir = remove_dir  # the directory was made for this store alone
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).unlink(missing_ok=True)  # whatever was there is stale
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS users "
            "(user_id TEXT PRIMARY KEY, partition INTEGER NOT NULL, state BLOB NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS by_partition ON users (partition)")

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def put(self, rows: Iterable[tuple[UserSnapshot, int]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO users VALUES (?, ?, ?)",
            ((s.user_id, p, encode_state(s)) for s, p in rows),
        )
        self.db.execute("COMMIT")

    def get(self, user_ids: Sequence[str]) -> list[tuple[UserSnapshot, int]]:
        """The stored users among ``user_ids`` with their partitions (absent ones left out)."""
        out: list[tuple[UserSnapshot, int]] = []
        for at in range(0, len(user_ids), 500):  # SQLite's bound-parameter limit
            part = list(user_ids[at : at + 500])
            marks = ",".join("?" * len(part))
            for partition, state in self.db.execute(
                f"SELECT partition, state FROM users WHERE user_id IN ({marks})", part
            ):
                out.append((decode_state(state), int(partition)))
        return out

    def forget_partitions(self, partitions: Sequence[int]) -> None:
        marks = ",".join("?" * len(partitions))
        self.db.execute(f"DELETE FROM users WHERE partition IN ({marks})", list(partitions))

    def close(self) -> None:
        self.db.close()
        if self.path != ":memory:":
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            if self.remove_dir:
                Path(self.path).parent.rmdir()


class Residency:
    """Keeps at most ``max_users`` users (and none idle past ``idle_ttl_s``, when above 0) in
    the recommender's memory; the others wait in ``store``.

    The worker calls :meth:`admit` with a batch's users before learning from it, :meth:`evict`
    after the batch is committed, :meth:`restore` for an assigned partition's users and
    :meth:`forget` for revoked partitions.
    """

    def __init__(
        self,
        recommender: Recommender,
        store: LocalStateStore,
        *,
        max_users: int,
        idle_ttl_s: float = 0.0,
        clock: object = time.monotonic,
    ) -> None:
        self.recommender = recommender
        self.store = store
        self.max_users = max_users
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._touched: OrderedDict[str, float] = OrderedDict()  # least recently used first
        self.loaded = 0
        self.evicted = 0

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def admit(self, partition_of: dict[str, int]) -> int:
        """Load the batch's users that wait in the store; mark every one of them as used now.
        Returns how many were loaded."""
        users = self.recommender.users
        missing = [uid for uid in partition_of if uid not in users]
        loaded = 0
        for snap, partition in self.store.get(missing) if missing else []:
            self.recommender.restore_users([snap], shard=partition)
            loaded += 1
        now = self._now()
        for uid in partition_of:
            self._touched[uid] = now
            self._touched.move_to_end(uid)
        self.loaded += loaded
        return loaded

    def evict(self) -> int:
        """Write back and drop the least recently used users beyond ``max_users`` and those
        idle past the TTL. Returns how many left memory."""
        users = self.recommender.users
        now = self._now()
        victims: list[str] = []
        while self._touched:
            uid, at = next(iter(self._touched.items()))
            over = len(self._touched) > self.max_users
            idle = self.idle_ttl_s > 0 and now - at > self.idle_ttl_s
            if not (over or idle):
                break
            self._touched.popitem(last=False)
            if uid in users:
                victims.append(uid)
        if not victims:
            return 0
        shards = users.shards_of(victims)
        snaps = self.recommender.snapshot_users(victims)
        self.store.put(zip(snaps, shards, strict=True))
        users.remove(victims)
        self.evicted += len(victims)
        return len(victims)

    def restore(self, partition: int, snapshots: Sequence[UserSnapshot]) -> int:
        """An assigned partition's users go to the store, to be loaded on their next event."""
        self.store.put((s, partition) for s in snapshots)
        return len(snapshots)

    def forget(self, partitions: Sequence[int]) -> None:
        """Revoked (or rolled-back) partitions: their users leave the store; the caller drops
        them from memory."""
        self.store.forget_partitions(partitions)
        users = self.recommender.users
        for uid in [u for u in self._touched if u not in users]:
            del self._touched[uid]
