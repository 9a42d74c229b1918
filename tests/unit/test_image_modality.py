"""Specifications of the image modality (issue 7, item 1): a frozen vision encoder beside the text
encoder, image embeddings fused with text ones in the head by a learned gate and projection, and
catalogs that mix items with and without images. The vision model is a tiny randomly initialised
ViT written to a temporary directory (tests/fixtures/tiny_vit.py): nothing is downloaded."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import consumer.app as app
from consumer.codec import encode_item
from consumer.config import WorkerConfig, add_arguments, config_from_args
from consumer.model_sync import ModelSync, Snapshot, encode_snapshot
from consumer.source import InMemorySource, Record
from learner.ann import AnnConfig
from learner.exceptions import EncoderError
from learner.explain import explain
from learner.fusion import FUSION_PARAMS, fuse
from learner.head import BilinearHead, HeadConfig
from learner.image_encoder import CachedImageEncoder, ImageEncoder
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, Item
from tests.fixtures.tiny_vit import png, write_tiny_vit
from tests.unit.conftest import ITEMS_TOPIC, BagOfWordsEncoder, WorkerRig

HIDDEN = 32  # the tiny ViT's width, so its image vectors' dimension
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)
TRUNCATED_PNG = png(RED)[:60]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vit(tmp_path_factory.mktemp("tiny-vit"), hidden=HIDDEN)


@pytest.fixture(scope="module")
def vit(vit_dir: Path) -> ImageEncoder:
    return ImageEncoder(vit_dir, device="cpu", batch_size=4)


def image_recommender(vit: ImageEncoder, items: list[Item], **config: Any) -> Recommender:
    rec = Recommender(
        BagOfWordsEncoder(), ModelConfig(**config), image_encoder=CachedImageEncoder(vit)
    )
    rec.upsert_items(items)
    return rec


def mixed_catalog() -> list[Item]:
    """Eight items, the even ones with images."""
    titles = [
        "Space war",
        "Robot ship in space",
        "Love in Paris",
        "Kiss in the rain",
        "Alien war in space",
        "Cook food",
        "Horse in the desert",
        "Music and dance",
    ]
    colours = [RED, None, GREEN, None, BLUE, None, RED, None]
    return [
        Item(chr(ord("a") + i), t, image=None if c is None else png(c, stripes=i))
        for i, (t, c) in enumerate(zip(titles, colours, strict=True))
    ]


def clicks(pairs: list[tuple[str, str]], start: int = 0) -> list[Event]:
    return [
        Event(f"e{start + n}", u, i, "click", None, 1_700_000_000_000 + (start + n) * 1000)
        for n, (u, i) in enumerate(pairs)
    ]


# -- the encoder ------------------------------------------------------------------------------


def test_image_encoder_gives_one_unit_vector_of_the_models_width_per_image(
    vit: ImageEncoder,
) -> None:
    out = vit.encode(
        [png(RED), png(GREEN, (64, 20)), png(BLUE, (7, 90)), png(RED, stripes=2), png(GREEN)]
    )  # five images, batches of 4
    assert vit.dim == HIDDEN
    assert out.vectors.shape == (5, HIDDEN) and out.vectors.dtype == torch.float32
    assert out.ok.tolist() == [True] * 5 and out.errors == (None,) * 5
    assert torch.allclose(out.vectors.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert not torch.allclose(out.vectors[0], out.vectors[1])  # different images differ
    # Batching does not change a vector.
    assert torch.allclose(vit.encode([png(GREEN)]).vectors[0], out.vectors[4], atol=1e-5)


def test_image_encoder_is_frozen_and_none_of_its_parameters_is_in_the_heads_optimiser(
    vit: ImageEncoder,
) -> None:
    assert not vit.model.training
    assert all(not p.requires_grad for p in vit.model.parameters())
    rec = image_recommender(vit, mixed_catalog())
    optimised = {id(p) for g in rec.head.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in vit.model.parameters()}
    assert rec.head.fusion is not None
    assert {id(p) for p in rec.head.fusion.parameters()} <= optimised


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "cannot identify image file"),
        (b"definitely not an image", "cannot identify image file"),
        (TRUNCATED_PNG, "does not decode"),
    ],
)
def test_bad_image_bytes_give_a_reason_and_a_zero_row_not_an_error(
    vit: ImageEncoder, data: bytes, reason: str
) -> None:
    out = vit.encode([png(RED), data])
    assert out.ok.tolist() == [True, False]
    assert out.errors[0] is None and reason in (out.errors[1] or "")
    assert torch.equal(out.vectors[1], torch.zeros(HIDDEN))


def test_image_cache_encodes_each_distinct_image_once_per_model(vit: ImageEncoder) -> None:
    cached = CachedImageEncoder(vit)
    first = cached.encode([png(RED), png(GREEN), png(RED)])
    again = cached.encode([png(GREEN), b"junk", png(BLUE)])
    assert cached.misses == 4 and cached.hits == 2  # RED twice, GREEN again
    assert torch.equal(first.vectors[1], again.vectors[0])
    assert again.ok.tolist() == [True, False, True]
    # The key covers the bytes and the model: another model's vectors are never served.
    assert cached.key(png(RED)) != cached.key(png(GREEN))
    renamed = ImageEncoder.__new__(ImageEncoder)
    renamed.name = "another-vit@0"
    assert CachedImageEncoder(renamed).key(png(RED)) != cached.key(png(RED))


# -- fusion -----------------------------------------------------------------------------------


def test_a_closed_gate_fuses_to_the_text_vector_and_an_open_one_adds_the_projected_image() -> None:
    text, image = torch.randn(3, 4), torch.randn(3, 2)
    proj, present = torch.randn(2, 4), torch.tensor([True, False, True])
    assert torch.equal(fuse(text, image, present, proj, torch.zeros(4)), text)
    gate = torch.full((4,), 0.7)
    out = fuse(text, image, present, proj, gate)
    assert out.shape == (3, 4)
    assert torch.allclose(out[0], text[0] + torch.tanh(gate) * (image[0] @ proj))
    assert torch.equal(out[1], text[1])  # no image: the text path


def test_an_untrained_image_head_ranks_exactly_like_the_text_only_head(vit: ImageEncoder) -> None:
    items = mixed_catalog()
    with_images = image_recommender(vit, items, min_events=1)
    text_only = Recommender(BagOfWordsEncoder(), ModelConfig(min_events=1, train=False))
    text_only.upsert_items(items)
    frozen = image_recommender(vit, items, min_events=1, train=False)
    for rec in (with_images, text_only, frozen):
        rec.learn(clicks([("u1", "a"), ("u2", "c")]))  # first events: nothing to train on yet
    a = with_images.recommend(["u1", "u2"], k=8)
    b = text_only.recommend(["u1", "u2"], k=8)
    assert [r.items for r in a] == [r.items for r in b]


def test_fusion_trains_online_with_the_head_and_items_without_images_keep_the_text_path(
    vit: ImageEncoder,
) -> None:
    rec = image_recommender(vit, mixed_catalog(), min_events=1)
    assert rec.head.fusion is not None
    pairs = [("u1", "a"), ("u1", "e"), ("u2", "c"), ("u2", "g"), ("u1", "g"), ("u2", "a")]
    for n in range(4):
        report = rec.learn(clicks(pairs, start=10 * n))
        assert report.trained_pairs > 0 or n == 0
    gate = rec.head.fusion.gate.detach()
    assert float(gate.abs().max()) > 0  # the gate opened a little
    rows = torch.arange(rec.items.num_rows)
    content = rec.head.content(rec.items.embeddings, rows, rec.items.image_view())
    has = rec.items.has_image[: rec.items.num_rows]
    assert has.tolist() == [True, False] * 4
    assert torch.equal(content[~has], rec.items.embeddings[: rec.items.num_rows][~has])
    assert not torch.allclose(content[has], rec.items.embeddings[: rec.items.num_rows][has])


def test_a_mixed_catalog_ranks_every_item_with_and_without_images(vit: ImageEncoder) -> None:
    rec = image_recommender(vit, mixed_catalog(), min_events=1)
    rec.learn(clicks([("u1", "a"), ("u1", "b"), ("u2", "h"), ("u1", "c"), ("u2", "g")]))
    rec.learn(clicks([("u1", "d"), ("u2", "e")], start=100))
    for rec_list in rec.recommend(["u1", "u2", "new-user"], k=20):
        consumed = {"u1": {"a", "b", "c", "d"}, "u2": {"h", "g", "e"}}.get(rec_list.user_id, set())
        ranked = [s.item_id for s in rec_list.items]
        assert sorted(ranked) == sorted(set("abcdefgh") - consumed)
        assert all(np.isfinite(s.score) for s in rec_list.items)


def test_an_unseen_item_that_looks_like_a_users_items_ranks_above_one_that_does_not(
    vit: ImageEncoder,
) -> None:
    """What fusion is for: every title is the same, so only the images tell red from blue."""
    catalog = [Item(f"r{i}", "Poster", image=png(RED, stripes=i)) for i in range(6)]
    catalog += [Item(f"b{i}", "Poster", image=png(BLUE, stripes=i)) for i in range(6)]
    rec = image_recommender(
        vit,
        catalog,
        min_events=1,
        cooc=False,
        trend_signal=False,
        head=HeadConfig(lr=0.05, negatives=4, popular_negatives=0.0),
    )
    red_fans = [(f"u{u}", f"r{(u + k) % 4}") for k in range(4) for u in range(4)]
    blue_fans = [(f"v{u}", f"b{(u + k) % 4}") for k in range(4) for u in range(4)]
    for n in range(100):  # about 30 steps are not enough for the gate to open far enough
        rec.learn(clicks(red_fans + blue_fans, start=1000 * n))
    assert rec.head.fusion is not None and float(rec.head.fusion.gate.detach().abs().max()) > 0.5
    rec.upsert_items(
        [
            Item("r-new", "Poster", image=png(RED, stripes=5)),
            Item("b-new", "Poster", image=png(BLUE, stripes=5)),
        ]
    )
    for user, liked in (("u0", "r-new"), ("v0", "b-new")):
        ranked = [s.item_id for s in rec.recommend([user], k=20)[0].items]
        assert ranked.index(liked) < ranked.index({"r-new": "b-new", "b-new": "r-new"}[liked])


def test_approximate_ranking_uses_the_fused_vectors_and_follows_the_gate_as_it_moves(
    vit: ImageEncoder,
) -> None:
    colours = [RED, GREEN, BLUE]
    catalog = [
        Item(f"i{i}", f"{['Space war', 'Love in Paris', 'Cook food'][i % 3]} {i}",
             image=png(colours[i % 3], stripes=i % 5) if i % 2 else None)
        for i in range(36)
    ]  # fmt: skip
    rec = image_recommender(
        vit, catalog, min_events=1, ann_min_items=0,
        ann=AnnConfig(nprobe=10_000, candidates=10_000, delta_check_steps=1, storage="flat"),
        head=HeadConfig(lr=0.05),
    )  # fmt: skip
    pairs = [(f"u{u}", f"i{(3 * k + u) % 36}") for k in range(6) for u in range(6)]
    for n in range(5):
        rec.learn(clicks(pairs, start=100 * n))
    users = [f"u{u}" for u in range(6)] + ["cold"]
    exact = rec.recommend(users, k=10)
    rec.config = dataclasses.replace(rec.config, ann_min_items=1)
    approx = rec.recommend(users, k=10)
    for a, e in zip(approx, exact, strict=True):
        assert [it.item_id for it in a.items] == [it.item_id for it in e.items]
        assert [it.score for it in a.items] == pytest.approx([it.score for it in e.items], abs=1e-5)
    rec.learn(clicks(pairs, start=1000))  # the gate moves: every image item's vector moves
    rec.recommend(users, k=10)
    assert rec._ann is not None and rec._ann.index is not None
    rows = torch.arange(rec.items.num_rows)
    fused = rec.head.vectors_at(rec.items.embeddings, rows, rec.items.image_view()).detach()
    stored = torch.stack([
        torch.from_numpy(rec._ann.index._index.reconstruct(int(r))) for r in rows
    ])  # fmt: skip
    assert torch.allclose(stored[:, : fused.shape[1]], fused, atol=1e-5)


def test_explanations_of_image_items_add_up_and_name_the_image_part(vit: ImageEncoder) -> None:
    rec = image_recommender(vit, mixed_catalog(), min_events=1)
    pairs = [("u1", "a"), ("u1", "e"), ("u2", "c"), ("u2", "g"), ("u1", "g"), ("u2", "b")]
    for n in range(4):
        rec.learn(clicks(pairs, start=10 * n))
    for listed in rec.recommend(["u1", "u2"], k=5):
        for position, scored in enumerate(listed.items, 1):
            ex = explain(rec, listed.user_id, scored.item_id)
            assert ex.final == pytest.approx(scored.score, abs=1e-5)
            assert ex.rank == position and ex.because == scored.because
    for item in "abcdefgh":
        ex = explain(rec, "u1", item)
        parts = {p.name: p.value for p in ex.parts}
        assert sum(parts.values()) == pytest.approx(ex.personal, abs=1e-5)
        has_image = "aceg".find(item) >= 0
        assert (parts["image"] != 0.0) == has_image  # the gate has opened a little


# -- the catalog and the cache ----------------------------------------------------------------


def test_an_item_with_bad_image_bytes_is_stored_with_its_text_only_and_reported(
    vit: ImageEncoder,
) -> None:
    rec = image_recommender(vit, [])
    report = rec.upsert_items_report(
        [
            Item("ok", "Space war", image=png(RED)),
            Item("bad", "Robot ship", image=b"\x89PNG junk"),
            Item("none", "Cook food"),
        ]
    )
    assert report.stored == 3
    assert [item_id for item_id, _ in report.bad_images] == ["bad"]
    assert all(name in rec.items for name in ("ok", "bad", "none"))
    present = rec.items.has_image
    assert [bool(present[rec.items.row_of(i)]) for i in ("ok", "bad", "none")] == [
        True,
        False,
        False,
    ]
    assert len(rec.recommend(["anyone"], k=3, min_events=0)[0].items) == 3


def test_an_item_is_re_encoded_when_its_image_changes_and_only_then(vit: ImageEncoder) -> None:
    cached = CachedImageEncoder(vit)
    rec = Recommender(BagOfWordsEncoder(), image_encoder=cached)
    assert rec.upsert_items([Item("a", "Space war", image=png(RED))]) == 1
    row = rec.items.row_of("a")
    red = rec.items.images[row].clone()
    assert rec.upsert_items([Item("a", "Space war", image=png(RED))]) == 0  # unchanged
    assert rec.upsert_items([Item("a", "Space war", image=png(GREEN))]) == 1
    assert not torch.equal(rec.items.images[row], red)
    assert rec.upsert_items([Item("a", "Space war")]) == 1  # the image was removed
    assert not bool(rec.items.has_image[row])
    assert rec.upsert_items([Item("a", "Space war", image=png(RED))]) == 1
    assert torch.equal(rec.items.images[row], red) and cached.misses == 2  # RED from the cache


def test_without_an_image_encoder_images_are_ignored() -> None:
    rec = Recommender(BagOfWordsEncoder())
    assert rec.items.image_view() is None and rec.head.fusion is None
    assert rec.upsert_items([Item("a", "Space war", image=b"not even an image")]) == 1
    assert rec.upsert_items([Item("a", "Space war", image=png(RED))]) == 0  # same text
    assert "+" not in rec.model_version


# -- the shared head --------------------------------------------------------------------------


def test_fusion_parameters_are_shared_between_workers_with_their_shapes_checked() -> None:
    a = BilinearHead(dim=4, capacity=2, image_dim=3)
    b = BilinearHead(dim=4, capacity=2, image_dim=3, config=HeadConfig(seed=7))
    state, own = a.shared_state(), b.shared_state()
    assert set(state) == {"U", "V", "mix", *FUSION_PARAMS}
    assert state["image_proj"].shape == (3, 4) and state["image_gate"].shape == (4,)
    assert not np.allclose(state["image_proj"], own["image_proj"])  # seeds differ
    b.load_shared([state, own])
    assert b.fusion is not None
    mean = (state["image_proj"] + own["image_proj"]) / 2
    assert np.allclose(b.fusion.proj.detach().numpy(), mean)
    text_only = BilinearHead(dim=4, capacity=2)
    with pytest.raises(ValueError, match="shared parameters"):
        b.load_shared([text_only.shared_state()])
    with pytest.raises(ValueError, match="shared parameters"):
        text_only.load_shared([state])
    wrong = {**state, "image_proj": np.zeros((5, 4), dtype=np.float32)}
    with pytest.raises(ValueError, match="image_proj: shape"):
        b.load_shared([wrong])


def test_a_worker_with_images_ignores_the_snapshots_of_text_only_peers() -> None:
    published: list[tuple[bytes, bytes | None]] = []
    text_only = BilinearHead(dim=4, capacity=2)
    published.append(
        (b"t", encode_snapshot(Snapshot("t", 1_000_000, 1, "enc", text_only.shared_state())))
    )
    mine = BilinearHead(dim=4, capacity=2, image_dim=3)
    sync = ModelSync(mine, "mine", "enc", _Feed(published), published.append, clock=lambda: 1000.0)
    assert sync.start() == 0 and sync.ignored == 1


class _Feed:
    def __init__(self, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records = records

    def poll(self) -> list[tuple[bytes, bytes | None]]:
        out, self.records = list(self.records), []
        return out


# -- settings ---------------------------------------------------------------------------------


def test_image_encoder_is_a_worker_setting_that_reaches_the_model(
    vit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"FRESHREC_IMAGE_ENCODER": str(vit_dir)}
    config = config_from_args(parser.parse_args(["--image-encoder-batch-size", "3"]), env)
    assert config.image_encoder == str(vit_dir) and config.image_encoder_batch_size == 3
    assert WorkerConfig().image_encoder == ""  # off by default

    class NoText:  # the real text encoder is not what this test is about
        name, dim, device = "no-text", 4, torch.device("cpu")

        def __init__(self, *args: object, **kwargs: object) -> None: ...

    monkeypatch.setattr(app, "TextEncoder", NoText)
    rec = app.build_recommender(dataclasses.replace(config, device="cpu", torch_threads=0))
    assert isinstance(rec.image_encoder, CachedImageEncoder)
    assert rec.image_encoder.encoder.batch_size == 3 and rec.image_encoder.dim == HIDDEN
    assert rec.encoder_name == f"no-text+{rec.image_encoder.name}"
    assert app.build_recommender(WorkerConfig(torch_threads=0)).image_encoder is None
    with pytest.raises(EncoderError, match="does not exist"):
        app.build_recommender(WorkerConfig(image_encoder=str(vit_dir / "nope"), torch_threads=0))


# -- the worker, end to end in memory ---------------------------------------------------------


def test_the_worker_stores_image_items_ranks_them_and_counts_bad_images(
    vit: ImageEncoder,
    make_worker: Callable[..., WorkerRig],
    event_record: Callable[..., Record],
) -> None:
    catalog = mixed_catalog()
    catalog[1] = Item("b", "Robot ship in space", image=TRUNCATED_PNG)
    items = InMemorySource(
        [
            Record(ITEMS_TOPIC, 0, n, it.item_id.encode(), encode_item(it))
            for n, it in enumerate(catalog)
        ]
    )
    rec = Recommender(
        BagOfWordsEncoder(), ModelConfig(min_events=1), image_encoder=CachedImageEncoder(vit)
    )
    events = [
        event_record(n, user=u, item=i)
        for n, (u, i) in enumerate(
            [("u1", "a"), ("u1", "c"), ("u2", "b"), ("u1", "e"), ("u2", "g")]
        )
    ]
    rig = make_worker(events, items=items, recommender=rec, batch_size=2)
    assert rig.worker.bootstrap() == 8
    rig.worker.run(max_batches=3, until=lambda: rig.source.exhausted)
    assert rig.sample("freshrec_item_images_invalid_total") == 1
    assert rig.sample("freshrec_items_rejected_total", reason="bad_image") == 0
    assert not rig.dlq.letters  # the item was valid: stored without its image, not dead-lettered
    assert rec.items.has_image[: rec.items.num_rows].tolist() == [
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    latest = {r.user_id: r for r in rig.publisher.published}
    assert set(latest) == {"u1", "u2"}
    assert {s.item_id for s in latest["u1"].items} == set("bdfgh")
    assert "+" in latest["u1"].model_version  # text and image encoder named
    assert rec.head.steps > 0
