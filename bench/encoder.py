"""Encoder throughput: freshrec's TextEncoder against sentence-transformers on the same texts.

Embeds two kinds of text, (a) short movie titles and (b) movie descriptions of about 128 tokens,
with freshrec's ``TextEncoder`` and with sentence-transformers' ``SentenceTransformer`` loaded
from the same model directory, on the same device, in the same run. Each repeat times every
encoder over all texts of a kind, in an order that rotates from repeat to repeat, and the table
reports the median rate of each. Both encoders truncate at the same ``--max-length`` (128, the
encoder's default; sentence-transformers' own default for this model is 256), so both compute
the same tokens. sentence-transformers loads the weights in fp32 and uses batches of 32 (its
default) on CPU and 256 on CUDA unless ``--st-batch-size`` says otherwise; freshrec uses its own
settings for the device (fp32 on CPU, bf16 or fp16 on CUDA; batches of 256 and 1024).

On CPU the run also times freshrec's encoder with int8 dynamic quantisation of its linear layers
(``quantize="int8"``) and in bf16 (``quantize="bf16"``, which pays only on CPUs with AVX512-BF16
or AMX), and reports how closely their vectors agree with the fp32 ones (cosine).

Titles come from MovieLens-100K when its cache exists (``consumer.datasets``; nothing is
downloaded here), else from a seeded generator; descriptions are generated deterministically
from the titles. sentence-transformers is imported lazily: without it the rows carry ``null``
for its rate and ratio. Where scipy or scikit-learn are missing (the GPU machine), they are
replaced by inert stand-ins, since ``SentenceTransformer.encode`` never calls them.

Usage: ``.venv/bin/python bench/encoder.py [--device cpu|cuda] [--texts N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import random
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from learner.encoder import TextEncoder, default_model_dir

KINDS = ("titles", "descriptions")
ROW_KEYS = (
    "device",
    "texts",
    "mean_tokens",
    "freshrec_items_per_s",
    "sentence_transformers_items_per_s",
    "ratio",
)
_STUBBABLE = ("scipy", "sklearn")

# --------------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------------

_TITLE_FIRST = (
    "The", "A", "Last", "Little", "Dark", "Lost", "Silent", "Golden", "Wild", "Broken", "Secret",
)  # fmt: skip
_TITLE_SECOND = (
    "River", "City", "Summer", "Garden", "Empire", "Kingdom", "Stranger", "Road", "Island",
    "Letter", "Machine", "Winter", "Harbour", "Mirror", "Circus",
)  # fmt: skip
_SEQUELS = ("II", "III", "Returns", "Reloaded", "Redux", "The Beginning", "Forever", "Again")
_GENRES = ("drama", "comedy", "thriller", "western", "romance", "documentary", "musical", "mystery")
_PEOPLE = (
    "a retired detective", "two estranged sisters", "a young pilot", "an ageing jazz singer",
    "a small-town teacher", "a disgraced surgeon", "three childhood friends", "a factory worker",
    "an ambitious lawyer", "a travelling salesman", "a reluctant prince", "a war photographer",
)  # fmt: skip
_PLACES = (
    "a fishing village in Maine", "post-war Vienna", "the suburbs of Chicago", "a Tokyo hotel",
    "the Scottish Highlands", "a mining town in Nevada", "1970s Marseille", "a Berlin archive",
    "a lighthouse off the Irish coast", "the outskirts of Mexico City", "a crumbling estate",
)  # fmt: skip
_GOALS = (
    "uncover what really happened on the night of the flood",
    "win back the family restaurant before the bank seizes it",
    "deliver a stolen painting across three borders",
    "keep a promise made to a dying friend",
    "find the stranger who keeps leaving letters at the door",
    "rebuild a life after ten years in prison",
    "stage one last concert in an abandoned theatre",
)  # fmt: skip
_TURNS = (
    "an old rivalry resurfaces", "the weather closes every road", "a child goes missing",
    "the money runs out", "a long-buried diary turns up", "the police start asking questions",
)  # fmt: skip
_PRAISE = (
    "Critics praised its patient pacing and the warmth of its lead performances.",
    "The film was a modest hit and later found a devoted audience on home video.",
    "Its score, built from a handful of piano themes, is often singled out.",
    "Shot on location in forty days, it blends quiet humour with real suspense.",
    "Some reviewers found the final act rushed, but most admired its ambition.",
    "The screenplay was adapted from a novel that had been out of print for decades.",
)  # fmt: skip


def synthetic_titles(n: int, *, seed: int = 0) -> list[str]:
    """``n`` distinct movie-like titles, the same for the same seed.

    Examples
    --------
    >>> synthetic_titles(2) == synthetic_titles(2)
    True
    """
    rng = random.Random(seed)
    titles = []
    for _ in range(n):
        first = rng.choice(_TITLE_FIRST)
        second = rng.choice(_TITLE_SECOND)
        titles.append(f"{first} {second} ({rng.randrange(1930, 2000)})")
    return _distinct(titles)


def _distinct(titles: Sequence[str]) -> list[str]:
    """Repeated titles get sequel suffixes, so no two texts are the same."""
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        k = seen.get(title, 0)
        seen[title] = k + 1
        out.append(title if k == 0 else f"{title} {_SEQUELS[(k - 1) % len(_SEQUELS)]} {k}")
    return out


def ml100k_titles(n: int, directory: Path | None) -> list[str] | None:
    """The first ``n`` ml-100k titles (cycled, with sequel suffixes), or None without the cache."""
    from consumer.datasets import _default_cache_dir, load_ml100k_items

    folder = directory if directory is not None else _default_cache_dir() / "ml-100k"
    if not (folder / "ml-100k.item").is_file():
        return None
    base = [item.title for item in load_ml100k_items(folder)]
    return _distinct([base[i % len(base)] for i in range(n)])


def describe(title: str, rng: random.Random, words: int) -> str:
    """A synopsis-like description of at least ``words`` words that starts with ``title``.

    Examples
    --------
    >>> describe("Toy Story (1995)", random.Random(0), 20).startswith("Toy Story (1995). A ")
    True
    """
    parts = [f"{title}. A {rng.choice(_GENRES)} set in {rng.choice(_PLACES)}."]
    count = len(parts[0].split())
    while count < words:
        sentence = rng.choice(
            (
                f"It follows {rng.choice(_PEOPLE)} who must {rng.choice(_GOALS)}.",
                f"Things get harder when {rng.choice(_TURNS)}, and a visitor arrives from "
                f"{rng.choice(_PLACES)}.",
                rng.choice(_PRAISE),
                f"Along the way {rng.choice(_PEOPLE)} tries to {rng.choice(_GOALS)}.",
            )
        )
        parts.append(sentence)
        count += len(sentence.split())
    return " ".join(parts)


def make_texts(n: int, ml100k: Path | None, *, seed: int = 0) -> tuple[dict[str, list[str]], str]:
    """``{"titles": [...], "descriptions": [...]}`` of ``n`` texts each, and the titles' source."""
    titles = ml100k_titles(n, ml100k)
    source = "ml-100k"
    if titles is None:
        titles, source = synthetic_titles(n, seed=seed), "synthetic"
    rng = random.Random(seed)
    # 90-110 words come to about 115-145 tokens with these phrases (mean ~130).
    descriptions = [describe(t, rng, rng.randrange(90, 111)) for t in titles]
    return {"titles": titles, "descriptions": descriptions}, source


# --------------------------------------------------------------------------------------------
# sentence-transformers, imported lazily
# --------------------------------------------------------------------------------------------


class _Inert:
    """Stands in for any scipy / scikit-learn name; using it fails loudly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__} is a stand-in: scipy/sklearn are not installed")

    def __class_getitem__(cls, item: Any) -> Any:
        return cls


class _InertModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Inert,), {})


class _InertFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves inert modules for scipy and sklearn, which sentence-transformers imports eagerly
    but whose code ``encode`` never runs (sparse outputs, similarity helpers, evaluators)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.split(".")[0] in _STUBBABLE:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _InertModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def import_sentence_transformers() -> tuple[Any, str]:
    """``(SentenceTransformer class or None, a note for the reader)``."""
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing == "sentence_transformers":
            return None, "sentence-transformers is not installed: its columns are null"
        if missing not in _STUBBABLE:
            return None, f"sentence-transformers cannot be imported (no {err.name}): null columns"
    except Exception as err:  # an optional peer: any failure is reported, and the run goes on
        return None, f"sentence-transformers cannot be imported ({err!r}): null columns"
    else:
        return SentenceTransformer, ""
    for name in [m for m in sys.modules if m.split(".")[0] == "sentence_transformers"]:
        del sys.modules[name]
    sys.meta_path.append(_InertFinder())
    try:
        from sentence_transformers import SentenceTransformer
    except Exception as err:  # as above
        return None, f"sentence-transformers cannot be imported ({err!r}): null columns"
    return SentenceTransformer, f"sentence-transformers runs with inert {missing}/sklearn stand-ins"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(
    encode: Callable[[list[str]], Tensor], texts: list[str], device: str
) -> tuple[float, Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    vectors = encode(texts)
    _sync(device)
    return len(texts) / (time.perf_counter() - t0), vectors


def _cosines(a: Tensor, b: Tensor) -> Tensor:
    a = torch.nn.functional.normalize(a.float().cpu(), dim=-1)
    b = torch.nn.functional.normalize(b.float().cpu(), dim=-1)
    return (a * b).sum(-1)


def _progress(message: str) -> None:
    print(f"[bench/encoder] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    on_cuda = device.startswith("cuda")
    threads = args.threads if args.threads is not None else (0 if on_cuda else 1)
    if threads > 0:
        torch.set_num_threads(threads)
    n = args.texts if args.texts is not None else (20_000 if on_cuda else 256)
    st_batch = args.st_batch_size or (256 if on_cuda else 32)
    model_dir = args.model if args.model is not None else default_model_dir()
    texts, source = make_texts(n, args.ml100k)
    _progress(f"{n} texts of each kind (titles: {source}); model {model_dir}; device {device}")

    fr_kwargs: dict[str, Any] = {"device": device, "max_length": args.max_length}
    if args.batch_size is not None:
        fr_kwargs["batch_size"] = args.batch_size
    freshrec = TextEncoder(model_dir, **fr_kwargs)
    encoders: dict[str, Callable[[list[str]], Tensor]] = {"freshrec": freshrec.encode}
    fr_variant = (
        "fp32" if freshrec.device.type == "cpu" else str(freshrec.model.dtype).split(".")[1]
    )
    quantized = [q for q in args.quantized.split(",") if q] if freshrec.device.type == "cpu" else []
    for q in quantized:
        encoders[f"freshrec-{q}"] = TextEncoder(model_dir, quantize=q, **fr_kwargs).encode

    st_class, st_note = import_sentence_transformers()
    if st_note:
        _progress(st_note)
    st_version = None
    if st_class is not None:
        import sentence_transformers

        st_version = sentence_transformers.__version__
        try:
            st = st_class(str(model_dir), device=device, model_kwargs={"dtype": torch.float32})
        except Exception as err:  # report and go on with freshrec's rows alone
            _progress(f"sentence-transformers cannot load {model_dir} ({err!r}): null columns")
            st_class = None
    if st_class is not None:
        st.max_seq_length = args.max_length

        def st_encode(batch: list[str]) -> Tensor:
            out = st.encode(
                batch, batch_size=st_batch, convert_to_tensor=True, show_progress_bar=False
            )
            return out  # type: ignore[no-any-return]

        encoders["sentence-transformers"] = st_encode

    rows: list[dict[str, Any]] = []
    names = list(encoders)
    for kind in KINDS:
        batch = texts[kind]
        lengths = [len(ids) for ids in freshrec.tokenizer(batch, truncation=False)["input_ids"]]
        mean_tokens = statistics.fmean(min(x, args.max_length) for x in lengths)
        truncated = sum(x > args.max_length for x in lengths) / len(lengths)
        # Warm-up over every text, untimed: on CUDA each new batch shape (texts x width) picks
        # its kernels and allocates pinned and device blocks on first use. With a 64-text
        # warm-up, freshrec's first timed pass over 20k texts on an H200 ran 2-9x slower than
        # its later ones, and the median of 3 still held a cold pass.
        for name in names:
            encoders[name](batch)
        rates: dict[str, list[float]] = {name: [] for name in names}
        vectors: dict[str, Tensor] = {}
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                rate, vectors[name] = _timed(encoders[name], batch, device)
                rates[name].append(rate)
                _progress(f"{kind} repeat {r + 1}/{args.repeats}: {name} {rate:,.1f} items/s")
        median = {name: statistics.median(values) for name, values in rates.items()}
        st_rate = median.get("sentence-transformers")
        common = {
            "device": device,
            "device_name": _device_name(device),
            "kind": kind,
            "titles_source": source,
            "texts": len(batch),
            "mean_tokens": round(mean_tokens, 1),
            "truncated_share": round(truncated, 3),
            "max_length": args.max_length,
            "batch_size": freshrec.batch_size,
            "st_batch_size": st_batch if st_class is not None else None,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "sentence_transformers": st_version,
        }
        variants = [("freshrec", fr_variant)] + [(f"freshrec-{q}", q) for q in quantized]
        for name, variant in variants:
            row = dict(common)
            row["variant"] = variant
            row["freshrec_items_per_s"] = round(median[name], 1)
            row["sentence_transformers_items_per_s"] = (
                round(st_rate, 1) if st_rate is not None else None
            )
            row["ratio"] = round(median[name] / st_rate, 3) if st_rate else None
            if "sentence-transformers" in vectors:
                cos = _cosines(vectors[name], vectors["sentence-transformers"])
                row["cosine_vs_st_min"] = round(float(cos.min()), 6)
            if name != "freshrec":
                cos = _cosines(vectors[name], vectors["freshrec"])
                row["cosine_vs_fp32_mean"] = round(float(cos.mean()), 6)
                row["cosine_vs_fp32_min"] = round(float(cos.min()), 6)
            rows.append(row)
    return rows


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return platform.processor() or platform.machine()


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    def num(value: Any, spec: str = ",.1f") -> str:
        return "-" if value is None else format(value, spec)

    print("\n| kind | variant | texts | mean tokens | freshrec/s | s-t/s | ratio | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "cosine_vs_fp32_min" in row:
            cosine = (
                f"vs fp32: mean {row['cosine_vs_fp32_mean']:.5f} "
                f"min {row['cosine_vs_fp32_min']:.5f}"
            )
        elif "cosine_vs_st_min" in row:
            cosine = f"vs s-t: min {row['cosine_vs_st_min']:.5f}"
        else:
            cosine = ""
        print(
            f"| {row['kind']} | {row['variant']} | {row['texts']} | {row['mean_tokens']:.1f} "
            f"| {num(row['freshrec_items_per_s'])} "
            f"| {num(row['sentence_transformers_items_per_s'])} "
            f"| {num(row['ratio'], '.2f')} | {cosine} |"
        )
    if rows:
        first = rows[0]
        print(
            f"\n{first['device']} ({first['device_name']}), torch {first['torch']}, "
            f"{first['threads']} torch threads, medians of {first['repeats']} alternating repeats"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument(
        "--texts",
        type=int,
        default=None,
        help="texts of each kind (default: 256 on CPU, 20000 on CUDA)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per encoder (default: 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    ap.add_argument(
        "--model", type=Path, default=None, help="encoder directory (default: the package's)"
    )
    ap.add_argument(
        "--ml100k", type=Path, default=None, help="ml-100k directory (default: the cache)"
    )
    ap.add_argument(
        "--max-length", type=int, default=128, help="tokens kept per text, both encoders"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="freshrec's batch size (default: its own)"
    )
    ap.add_argument(
        "--st-batch-size",
        type=int,
        default=None,
        help="sentence-transformers' batch size (default: 32, its own default, on CPU, where it "
        "ran fastest; 256 on CUDA)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (0: torch's default; default: 1 on CPU, 0 on CUDA)",
    )
    ap.add_argument(
        "--quantized",
        default="int8,bf16",
        help="freshrec's quantised variants timed on CPU, comma-separated ('' for none; "
        "default: int8,bf16)",
    )
    args = ap.parse_args(argv)
    if args.texts is not None and args.texts < 1:
        ap.error("--texts must be at least 1")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    unknown = {q for q in args.quantized.split(",") if q} - {"int8", "bf16"}
    if unknown:
        ap.error(f"--quantized: unknown {', '.join(sorted(unknown))} (int8, bf16)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        _progress(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
