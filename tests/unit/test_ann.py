"""Specifications of approximate ranking (learner.ann and the recommender's ANN path): the
candidates are re-scored exactly, so ANN lists equal exact ones when the candidates cover them."""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Iterator, Sequence

import faiss
import pytest
import torch
from torch import Tensor

import consumer.app as app
import learner.recommender as recommender_module
from consumer.config import WorkerConfig, add_arguments, config_from_args
from consumer.exceptions import ConfigError
from learner.ann import AnnConfig, CatalogIndex, ItemIndex
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, Item, UserRecommendation

DIM = 16
T0_MS = 1_700_000_000_000


class VectorEncoder:
    """Encodes the text ``"v<row>"`` as row ``row`` of a fixed matrix."""

    name = "vectors"

    def __init__(self, vectors: Tensor) -> None:
        self.vectors = vectors

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, texts: Sequence[str]) -> Tensor:
        return torch.stack([self.vectors[int(t[1:])] for t in texts])


def clustered(n: int, topics: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(topics, DIM, generator=g), dim=-1)
    topic = torch.randint(0, topics, (n,), generator=g)
    noise = 0.3 * torch.randn(n, DIM, generator=g)
    return torch.nn.functional.normalize(centres[topic] + noise, dim=-1), topic


def build(
    n: int = 400,
    users: int = 40,
    topics: int = 12,
    ann: AnnConfig | None = None,
    extra_vectors: int = 0,
    **config: object,
) -> tuple[Recommender, list[str]]:
    """A trained recommender over ``n`` clustered items (ANN off) and its users; ``extra_vectors``
    more rows of the encoder's matrix are left for items added later."""
    vectors, topic = clustered(n + extra_vectors, topics)
    settings: dict[str, object] = {"ann_min_items": 0, "min_events": 3, "cooc_neighbours": 32}
    settings |= config
    if ann is not None:
        settings["ann"] = ann
    rec = Recommender(VectorEncoder(vectors), ModelConfig(**settings))  # type: ignore[arg-type]
    rec.upsert_items([Item(f"i{i}", f"v{i}") for i in range(n)])
    g = torch.Generator().manual_seed(1)
    events: list[Event] = []
    for u in range(users):
        members = torch.nonzero(topic[:n] == u % topics).squeeze(-1)
        for _ in range(1 + u % 9):  # 1 to 9 events: blending and personal users alike
            item = int(members[int(torch.randint(0, members.numel(), (1,), generator=g))])
            events.append(
                Event(f"e{len(events)}", f"u{u}", f"i{item}", "click", None, T0_MS + len(events))
            )
    for a in range(0, len(events), 50):
        rec.learn(events[a : a + 50])
    return rec, [f"u{u}" for u in range(users)] + ["cold"]


def ann_on(rec: Recommender, **ann: int) -> None:
    rec.config = dataclasses.replace(
        rec.config, ann_min_items=1, ann=dataclasses.replace(rec.config.ann, **ann)
    )


def exact_on(rec: Recommender) -> None:
    rec.config = dataclasses.replace(rec.config, ann_min_items=0)


def ids(recs: list[UserRecommendation]) -> list[list[str]]:
    return [[it.item_id for it in r.items] for r in recs]


def assert_same_lists(approx: list[UserRecommendation], exact: list[UserRecommendation]) -> None:
    """Same items in the same order with the same scores, up to the order of tied items."""
    for a, e in zip(approx, exact, strict=True):
        scores = [it.score for it in e.items]
        assert [it.score for it in a.items] == pytest.approx(scores, abs=1e-5)
        for i, (x, y) in enumerate(zip(a.items, e.items, strict=True)):
            tied = sum(abs(s - y.score) < 1e-5 for s in scores) > 1 or i == len(scores) - 1
            assert x.item_id == y.item_id or tied
            assert x.because == y.because or x.item_id != y.item_id


def recall(approx: list[UserRecommendation], exact: list[UserRecommendation]) -> float:
    hits = sum(len(set(a) & set(e)) for a, e in zip(ids(approx), ids(exact), strict=True))
    return hits / sum(len(e) for e in ids(exact))


@pytest.fixture(autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """These indexes are tiny; OpenMP threads would only wait on each other."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


# -- the index ---------------------------------------------------------------------------


def test_item_index_finds_the_best_inner_products_when_every_list_is_scanned() -> None:
    x, _ = clustered(400, 8)
    index = ItemIndex.build(torch.arange(400), lambda rows: x[rows], AnnConfig(nlist=4, nprobe=4))
    q = torch.randn(5, DIM, generator=torch.Generator().manual_seed(3))
    assert torch.equal(index.search(q, 7), torch.topk(q @ x.T, 7).indices)


def test_item_index_pads_with_minus_one_when_fewer_rows_exist() -> None:
    x, _ = clustered(100, 2)
    index = ItemIndex.build(torch.arange(0, 100, 2), lambda rows: x[rows], AnnConfig(nlist=1))
    found = index.search(x[:1], 60)
    assert (found[0, :50] >= 0).all() and (found[0, 50:] == -1).all()
    assert set(found[0, :50].tolist()) == set(range(0, 100, 2))


# -- equal to exact ----------------------------------------------------------------------


def test_ann_lists_equal_exact_lists_when_the_candidates_cover_the_catalog() -> None:
    rec, users = build(ann=AnnConfig(nprobe=10_000, candidates=10_000))
    exact = rec.recommend(users, k=10)
    ann_on(rec)
    approx = rec.recommend(users, k=10)
    assert rec._ann is not None and rec._ann.builds == 1
    assert {r.strategy for r in approx} == {"popular", "blend", "personal"}
    assert_same_lists(approx, exact)  # the cold user's trending items tie


def test_ann_recall_is_high_on_a_clustered_catalog_with_default_settings() -> None:
    rec, users = build(n=2500, users=120, topics=30)
    exact = rec.recommend(users, k=10, explain=False)
    ann_on(rec)
    approx = rec.recommend(users, k=10, explain=False)
    assert rec._ann is not None and rec._ann.index is not None
    assert rec._ann.index.nlist > 8  # really approximate: only some lists are scanned
    assert recall(approx, exact) >= 0.9


def test_exact_scoring_in_chunks_equals_scoring_all_users_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec, users = build()
    whole = rec.recommend(users, k=10)
    monkeypatch.setattr(recommender_module, "_SCORE_ELEMENTS", 3 * rec.items.num_rows)
    assert_same_lists(rec.recommend(users, k=10), whole)


def test_sparse_cooccurrence_equals_the_dense_signal() -> None:
    rec, users = build()
    rows = [rec.users.row(u) for u in users]
    dense = rec._signals(rows)[0]
    keys, values = rec._cooc_sparse(rows)
    sparse = torch.zeros_like(dense).reshape(-1)
    sparse[keys] = values
    assert torch.allclose(sparse.reshape(dense.shape), dense, atol=1e-6)
    assert int((dense > 0).sum()) == int((values > 0).sum())


# -- what must never change --------------------------------------------------------------


def test_consumed_items_are_never_recommended() -> None:
    rec, users = build(ann=AnnConfig(candidates=5))
    ann_on(rec)
    for user, r in zip(users[:-1], rec.recommend(users[:-1], k=20), strict=True):
        consumed = {rec.items.ids[i] for i in rec.users.consumed(user)}
        assert consumed
        assert not consumed & {it.item_id for it in r.items}


def test_deleted_items_never_come_back() -> None:
    rec, users = build()
    ann_on(rec)
    before = rec.recommend(users, k=10)
    gone = sorted({it.item_id for r in before for it in r.items[:3]})
    indexed = len(rec._ann.index) if rec._ann and rec._ann.index else 0
    assert rec.delete_items(gone) == len(gone)
    after = rec.recommend(users, k=10)
    assert not set(gone) & {it.item_id for r in after for it in r.items}
    assert rec._ann is not None and rec._ann.index is not None
    assert len(rec._ann.index) == indexed - len(gone)
    assert rec._ann.builds == 1  # refreshed, not rebuilt


def test_items_added_after_the_index_was_built_are_recommended() -> None:
    rec, _ = build(extra_vectors=1)
    ann_on(rec)
    user = "u5"
    rec.recommend([user], k=10)
    # A new item pointing exactly where the user's query points beats everything else.
    q = rec.head.query(rec.users.vectors[rec.users.row(user)].unsqueeze(0))[0]
    new_row = rec.items.num_rows
    rec.encoder.vectors[new_row] = torch.nn.functional.normalize(q, dim=0)  # type: ignore[attr-defined]
    rec.upsert_items([Item("new", f"v{new_row}")])
    approx = rec.recommend([user], k=10)
    assert "new" in ids(approx)[0]
    assert rec._ann is not None and rec._ann.builds == 1
    exact_on(rec)
    assert_same_lists(approx, rec.recommend([user], k=10))


def test_head_steps_refresh_the_rows_they_moved() -> None:
    rec, users = build(ann=AnnConfig(nprobe=10_000, candidates=10_000))
    ann_on(rec)
    rec.recommend(users, k=10)
    assert rec._ann is not None
    refreshed = rec._ann.refreshed_rows
    rec.learn([Event("late", "u1", "i3", "purchase", None, T0_MS + 10_000)])
    approx = rec.recommend(users, k=10)
    assert rec._ann.refreshed_rows > refreshed
    exact_on(rec)
    assert_same_lists(approx, rec.recommend(users, k=10))


def test_a_change_to_delta_alone_is_found_by_the_periodic_check() -> None:
    rec, _ = build(ann=AnnConfig(delta_check_steps=1))
    ann_on(rec)
    rec.recommend(["u1"], k=10)
    assert rec._ann is not None
    refreshed = rec._ann.refreshed_rows
    rec.head.delta[[2, 5]] += 0.5
    rec.head.steps += 1
    rec.recommend(["u1"], k=10)
    assert rec._ann.refreshed_rows == refreshed + 2


def test_a_copy_of_the_recommender_builds_its_own_index() -> None:
    rec, users = build()
    ann_on(rec)
    before = rec.recommend(users, k=10)
    twin = copy.deepcopy(rec)
    assert twin._ann is not None and twin._ann.index is None
    assert_same_lists(twin.recommend(users, k=10), before)
    assert twin._ann.index is not None and rec._ann is not None and rec._ann.index is not None


# -- the setting -------------------------------------------------------------------------


def test_ann_switches_on_by_live_catalog_size() -> None:
    rec, users = build(n=300, ann_min_items=300)
    rec.recommend(users[:3], k=5)
    assert rec._ann is not None  # 300 live items: approximate
    rec.delete_items(["i0"])
    exact = rec.recommend(users[:3], k=5)
    calls = rec._ann.builds
    rec.recommend(users[:3], k=5)
    assert rec._ann.builds == calls  # below the threshold the index is left alone
    rec.config = dataclasses.replace(rec.config, ann_min_items=0)
    assert rec.recommend(users[:3], k=5) == exact


def test_catalog_index_trains_again_only_when_the_catalog_doubles() -> None:
    rec, _ = build(n=200, extra_vectors=300)
    index = CatalogIndex(AnnConfig())
    index.sync(rec.items, rec.head)
    rec.upsert_items([Item(f"n{i}", f"v{200 + i}") for i in range(150)])
    index.sync(rec.items, rec.head)
    assert index.builds == 1 and index.index is not None and len(index.index) == 350
    rec.upsert_items([Item(f"n{i}", f"v{200 + i}") for i in range(150, 300)])
    index.sync(rec.items, rec.head)
    assert index.builds == 2 and len(index.index) == 500


def test_ann_min_items_is_a_worker_setting_that_reaches_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def parse(argv: list[str], env: dict[str, str]) -> WorkerConfig:
        config: WorkerConfig = config_from_args(parser.parse_args(argv), env)
        return config

    assert parse([], {}).ann_min_items == ModelConfig().ann_min_items == 50_000
    assert parse([], {"FRESHREC_ANN_MIN_ITEMS": "0"}).ann_min_items == 0
    assert parse(["--ann-min-items", "7"], {"FRESHREC_ANN_MIN_ITEMS": "0"}).ann_min_items == 7
    with pytest.raises(ConfigError):
        parse(["--ann-min-items", "-1"], {})

    class NoModel:
        name, dim, device = "none", DIM, torch.device("cpu")

        def __init__(self, *args: object, **kwargs: object) -> None: ...

    monkeypatch.setattr(app, "TextEncoder", NoModel)
    rec = app.build_recommender(WorkerConfig(ann_min_items=123, torch_threads=0))
    assert rec.config.ann_min_items == 123


# -- learning on ANN-sized catalogs ------------------------------------------------------


def test_signals_at_chosen_items_equal_the_dense_signals_there() -> None:
    rec, users = build()
    rows = [rec.users.row(u) for u in users]
    dense = rec._signals(rows)
    cols = torch.randint(
        0, rec.items.num_rows, (len(rows), 7), generator=torch.Generator().manual_seed(2)
    )
    sparse = rec._signals_at(rows, cols)
    for s_i, sig in enumerate(dense):
        expected = sig.expand(len(rows), -1).gather(1, cols)
        assert torch.allclose(sparse[..., s_i], expected, atol=1e-5)


def test_hard_negatives_from_ann_candidates_are_the_users_top_items_without_the_positive() -> None:
    rec, users = build(ann=AnnConfig(nprobe=10_000, candidates=10_000))  # candidates: everything
    ann_on(rec)
    user_rows = rec.users.rows_for(users[:-1])
    exact_on(rec)
    top = rec.recommend(users[:-1], rec.config.hard_negative_pool + 1, explain=False, min_events=1)
    ann_on(rec)
    pos = torch.tensor([rec.items.find(r.items[0].item_id) for r in top])  # a top item as positive
    vectors = rec.users.vectors[user_rows]  # no profiles: ranking scores users by these
    hard = rec._hard_negatives_ann(user_rows, vectors, pos, torch.zeros_like(pos), count=30)
    for i, listed in enumerate(top):
        pool = {rec.items.find(it.item_id) for it in listed.items} - {int(pos[i])}
        assert set(hard[i].tolist()) <= pool


def test_learning_with_ann_on_trains_the_head() -> None:
    rec, users = build()
    ann_on(rec)
    steps = rec.head.steps
    events = [
        Event(f"x{i}", users[i], f"i{i}", "click", None, T0_MS + 10_000 + i) for i in range(20)
    ]
    report = rec.learn(events)
    assert report.trained_pairs > 0 and rec.head.steps == steps + 1
    assert rec.recommend(users[:3], 5)[0].items


def test_the_learner_runs_without_faiss_below_the_ann_threshold() -> None:
    """The GPU machine has no FAISS: exact ranking must not need it."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['faiss'] = None\n"
        "import torch\n"
        "from learner.recommender import Recommender\n"
        "from learner.types import Event, Item\n"
        "class Enc:\n"
        "    name, dim, device = 'e', 4, torch.device('cpu')\n"
        "    def encode(self, texts):\n"
        "        return torch.nn.functional.normalize(torch.rand(len(texts), 4) + 0.1, dim=-1)\n"
        "rec = Recommender(Enc())\n"
        "rec.upsert_items([Item(f'i{k}', f't{k}') for k in range(30)])\n"
        "rec.learn([Event(f'e{k}', 'u', f'i{k}', 'click', None, k) for k in range(5)])\n"
        "print(len(rec.recommend(['u'], 5)[0].items))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "5"


def test_learning_with_ann_on_and_only_hard_negatives_trains_users_never_ranked() -> None:
    """With every negative hard there is no sampled one to stand in for a user short of
    eligible candidates: the ANN path draws its own."""
    rec, users = build(hard_negatives=1.0)  # build() learns without ranking anyone
    ann_on(rec)
    events = [
        Event(f"x{i}", users[i], f"i{i}", "click", None, T0_MS + 10_000 + i) for i in range(20)
    ]
    report = rec.learn(events)
    assert report.trained_pairs == 20 * rec.config.head.negatives
