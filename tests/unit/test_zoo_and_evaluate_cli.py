"""freshrec's own models in the evaluation, and ``freshrec evaluate`` end to end on a slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from consumer.cli import main
from learner.evaluate import evaluate_stream
from learner.recommender import ModelConfig
from learner.types import Event, Item
from learner.zoo import MODEL_NAMES, FreshrecStream, RandomEncoder, model_specs
from tests.unit.test_evaluate import ROW_KEYS

ITEMS = [Item(f"i{n}", f"Item {n}") for n in range(12)]


def test_random_encoder_is_deterministic_per_text_and_seed() -> None:
    a, b = RandomEncoder(dim=8, seed=1), RandomEncoder(dim=8, seed=2)
    assert torch.equal(a.encode(["x", "y"]), a.encode(["x", "y"]))
    assert not torch.equal(a.encode(["x"]), b.encode(["x"]))
    assert torch.allclose(a.encode(["x"]).norm(dim=-1), torch.ones(1))


def test_freshrec_stream_never_ranks_an_excluded_item() -> None:
    model = FreshrecStream("freshrec", RandomEncoder(dim=8), ModelConfig(min_events=1))
    model.set_catalog(ITEMS)
    model.learn_one(Event("e0", "u", "i0", "click", None, 0))
    ranked = model.rank("u", 5, exclude={"i0", "i1", "i2"})
    assert len(ranked) == 5 and not {"i0", "i1", "i2"} & set(ranked)


def test_ids_only_ablation_sees_no_item_text() -> None:
    seen: list[str] = []

    class Spy(RandomEncoder):
        def encode(self, texts):  # type: ignore[no-untyped-def]
            seen.extend(texts)
            return super().encode(texts)

    model = FreshrecStream("freshrec_ids_only", Spy(dim=8), ModelConfig(), ids_only=True)
    model.set_catalog([Item("i1", "Star Wars", attributes={"genres": ["Sci-Fi"]})])
    assert seen == ["i1"]


def test_every_named_model_has_a_spec_that_runs_a_short_stream() -> None:
    specs = model_specs(RandomEncoder(dim=8))
    assert set(specs) == set(MODEL_NAMES)
    events = [Event(f"e{n}", f"u{n % 3}", f"i{n % 12}", "click", None, n) for n in range(40)]
    for name, spec in specs.items():
        params = {key: values[0] for key, values in spec.grid.items()}
        result = evaluate_stream(spec.factory(params), events, catalog_size=12, items=ITEMS)
        assert result.model == name
        assert next(r for r in result.rows() if r["split"] == "test")["events"] > 0


@pytest.mark.timeout(600)
def test_freshrec_evaluate_on_a_slice_of_ml100k_writes_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    argv = [
        "evaluate",
        "--dataset",
        "ml-100k",
        "--events",
        "1500",
        "--no-tune",
        "--no-progress",
        "--models",
        "popularity",
        "itemknn_recent",
        "freshrec",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["model"] for r in rows} == {"popularity", "itemknn_recent", "freshrec"}
    assert {r["split"] for r in rows} == {"tune", "test"}
    assert {r["slice"] for r in rows} == {"all", "cold_users", "cold_items", "warm"}
    assert all(set(r) == ROW_KEYS | {"ild@10", "genre_coverage@10"} for r in rows)
    test_all = [r for r in rows if r["split"] == "test" and r["slice"] == "all"]
    assert all(r["events"] == 1200 for r in test_all)
    assert all(0.0 <= r["hr@10"] <= 1.0 and r["ndcg@10"] <= r["hr@10"] for r in test_all)
    assert (out / "hr_moving.png").stat().st_size > 1000
    assert "| freshrec |" in (out / "results.md").read_text()
    assert "| freshrec | test | all |" in capsys.readouterr().out


def test_freshrec_evaluate_sweeps_diversity_and_writes_the_tradeoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    argv = ["evaluate", "--dataset", "ml-100k", "--events", "1500", "--no-tune", "--no-progress"]
    argv += ["--models", "freshrec", "--diversity", "0", "0.6", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "metrics.json").read_text())
    test_all = {r["model"]: r for r in rows if r["split"] == "test" and r["slice"] == "all"}
    assert set(test_all) == {"freshrec", "freshrec+mmr0.6"}
    plain, diverse = test_all["freshrec"], test_all["freshrec+mmr0.6"]
    # MMR trades relevance for lists whose items differ more in content and cover more genres.
    assert diverse["ild@10"] > plain["ild@10"]
    assert diverse["genre_coverage@10"] > plain["genre_coverage@10"]
    assert 0.0 < plain["genre_coverage@10"] <= 1.0
    table = (out / "diversity.md").read_text()
    assert "| freshrec+mmr0.6 | 0.6000 |" in table and "| freshrec | 0.0000 |" in table
    assert (out / "diversity_tradeoff.png").stat().st_size > 1000
    assert "diversity.md" in capsys.readouterr().out
