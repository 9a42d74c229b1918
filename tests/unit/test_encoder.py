"""Specifications of learner.encoder with the real all-MiniLM-L6-v2 weights (loaded once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from learner.encoder import CachedEncoder, mean_pool, resolve_device
from learner.exceptions import EncoderError
from learner.recommender import Recommender
from learner.types import Event, Item

SPACE_A = "Space war with starships"
SPACE_B = "A battle between spaceships among the stars"
COOKING = "A romantic comedy about cooking pasta in Rome"


class CountingEncoder:
    """Passes texts to the real encoder and remembers each text it was asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.device = inner.device
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> Tensor:
        self.seen.extend(texts)
        return self.inner.encode(texts)  # type: ignore[no-any-return]


def test_no_encoder_parameter_requires_grad(text_encoder: Any) -> None:
    params = list(text_encoder.model.parameters())
    assert params
    assert not any(p.requires_grad for p in params)
    assert text_encoder.model.training is False


def test_outputs_are_384_dimensional_unit_vectors(text_encoder: Any) -> None:
    vectors = text_encoder.encode([SPACE_A, COOKING, "x"])
    assert text_encoder.dim == 384
    assert vectors.shape == (3, 384)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not vectors.requires_grad


def test_encoding_the_same_text_twice_gives_identical_vectors(text_encoder: Any) -> None:
    first = text_encoder.encode([SPACE_A])
    second = text_encoder.encode([SPACE_A])
    assert torch.equal(first, second)


def test_a_texts_vector_does_not_depend_on_its_batch_or_position(text_encoder: Any) -> None:
    alone = text_encoder.encode([COOKING])[0]
    together = text_encoder.encode([SPACE_B, COOKING, "x"])
    assert torch.allclose(together[1], alone, atol=1e-5)


def test_similar_titles_are_closer_than_unrelated_ones(text_encoder: Any) -> None:
    a, b, c = text_encoder.encode([SPACE_A, SPACE_B, COOKING])
    assert float(a @ b) > float(a @ c) + 0.2
    assert float(a @ b) > float(b @ c) + 0.2


def test_empty_input_gives_an_empty_matrix(text_encoder: Any) -> None:
    assert text_encoder.encode([]).shape == (0, 384)


def test_name_identifies_the_model_and_its_weights(text_encoder: Any) -> None:
    assert text_encoder.name.startswith("all-MiniLM-L6-v2@")


def test_cached_encoder_encodes_an_unchanged_text_only_once(text_encoder: Any) -> None:
    counting = CountingEncoder(text_encoder)
    cached = CachedEncoder(counting)  # type: ignore[arg-type]
    first = cached.encode([SPACE_A, COOKING])
    again = cached.encode([COOKING, SPACE_B, SPACE_A, SPACE_B])
    assert sorted(counting.seen) == sorted([SPACE_A, COOKING, SPACE_B])
    assert (cached.hits, cached.misses) == (3, 3)
    assert torch.equal(again[0], first[1])
    assert torch.equal(again[2], first[0])
    assert torch.equal(again[1], again[3])
    assert (cached.dim, cached.name, cached.device) == (384, text_encoder.name, torch.device("cpu"))


def test_recommender_runs_on_the_real_encoder(text_encoder: Any) -> None:
    rec = Recommender(CachedEncoder(text_encoder))
    rec.upsert_items(
        [Item("s1", SPACE_A), Item("s2", SPACE_B), Item("c1", COOKING), Item("t", "Toy Story")]
    )
    rec.learn([Event("e1", "u1", "s1", "click", None, 0)])
    [r] = rec.recommend(["u1"], k=1, min_events=1)
    assert r.items[0].item_id == "s2"
    assert r.items[0].because == "s1"


def test_mean_pool_ignores_padding_and_normalises() -> None:
    hidden = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(pooled, torch.tensor([[0.6, 0.8]]))


def test_cpu_device_resolves_and_a_missing_gpu_is_an_encoder_error() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(EncoderError):
        resolve_device("cuda:0")


def test_missing_model_directory_is_an_encoder_error(tmp_path: Any) -> None:
    from learner.encoder import TextEncoder

    with pytest.raises(EncoderError):
        TextEncoder(tmp_path / "nowhere", device="cpu")
