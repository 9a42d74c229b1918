"""``freshrec finetune``: adapt the text encoder's top layers to a stream's first part, offline.

It loads a dataset with the loaders ``freshrec evaluate`` uses, keeps only the first
``--train-fraction`` of its events (the part ``freshrec evaluate`` tunes on, so the rest stays
unseen), trains with ``learner.finetune`` and writes a new encoder directory: the model and
tokenizer (``save_pretrained``) and ``freshrec-finetune.json``, what it was trained on. Any
``--encoder-dir`` setting (worker, evaluate) can then name that directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from learner.encoder import default_model_dir, resolve_device
from learner.evaluate import split_index
from learner.exceptions import EncoderError
from learner.finetune import FinetuneConfig, FinetuneReport, finetune, next_item_pairs
from learner.types import Event, Item

__all__ = ["METADATA_FILE", "check_no_leak", "read_metadata", "run_finetune", "write_encoder_dir"]

log = logging.getLogger(__name__)

# Written beside the weights; TextEncoder folds it into the encoder's name (and so into the
# model_version of every list), and ``freshrec evaluate`` reads it to refuse test-set leaks.
METADATA_FILE = "freshrec-finetune.json"


def read_metadata(encoder_dir: str | Path) -> dict[str, Any] | None:
    """The ``freshrec-finetune.json`` of an encoder directory, or None for one not made by
    ``freshrec finetune``."""
    path = Path(encoder_dir) / METADATA_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_encoder_dir(
    model: Any, tokenizer: Any, out: Path, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Save ``model`` and ``tokenizer`` into ``out`` and the metadata (plus the weights' hash)
    as ``freshrec-finetune.json``; returns the metadata written."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    weights = sorted(out.glob("*.safetensors")) + sorted(out.glob("*.bin"))
    meta = dict(metadata, weights_sha256={w.name: _sha256(w) for w in weights})
    tmp = out / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / METADATA_FILE)
    return meta


def _progress_printer(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(step: int, total: int, loss: float) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc="finetune", unit="step", mininterval=1.0)
        bar["bar"].set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar["bar"].update(1)
        if step == total:
            bar["bar"].close()

    return update


def run_finetune(
    *,
    out: Path,
    items: Sequence[Item],
    events: Sequence[Event],
    dataset: str,
    train_fraction: float = 0.2,
    encoder_dir: str | Path | None = None,
    device: str = "cpu",
    config: FinetuneConfig | None = None,
    progress: bool = False,
) -> tuple[FinetuneReport, dict[str, Any]]:
    """Fine-tune on the first ``train_fraction`` of ``events`` (the whole stream of a dataset,
    in time order) and write the encoder directory ``out``; returns the report and metadata."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    cfg = config or FinetuneConfig()
    if out.exists() and any(out.iterdir()):
        raise EncoderError(f"{out} exists and is not empty; choose a new directory")
    n_train = split_index(len(events), train_fraction)
    prefix = events[:n_train]
    pairs = next_item_pairs(prefix)
    texts = {it.item_id: it.text for it in items}
    base = Path(encoder_dir) if encoder_dir else default_model_dir()
    torch_device = resolve_device(device)
    log.info(
        "fine-tuning the top %d layers of %s on %d of %d events (%d pairs) on %s",
        cfg.layers,
        base,
        n_train,
        len(events),
        len(pairs),
        torch_device,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    # fp32 whatever the device: the trained layers' updates are small.
    model = AutoModel.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    model.to(torch_device)
    report = finetune(model, tokenizer, texts, pairs, cfg, progress=_progress_printer(progress))
    model.to("cpu")
    first = report.losses[: max(1, len(report.losses) // 10)]
    last = report.losses[-max(1, len(report.losses) // 10) :]
    metadata: dict[str, Any] = {
        "freshrec_finetune": 1,
        "base": str(base),
        "dataset": dataset,
        "stream_events": len(events),
        "train_fraction": train_fraction,
        "train_events": n_train,
        "last_train_event": prefix[-1].event_id if prefix else None,
        "last_train_ts": prefix[-1].ts if prefix else None,
        "pairs": report.pairs,
        "objective": "next-item InfoNCE, symmetric, in-batch negatives",
        "config": cfg.as_dict(),
        "steps": report.steps,
        "loss_first_tenth": sum(first) / len(first),
        "loss_last_tenth": sum(last) / len(last),
        "trained_parameters": len(report.trained),
        "seconds": round(report.seconds, 1),
        "device": str(torch_device),
        "torch_threads": torch.get_num_threads(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "freshrec " + " ".join(sys.argv[1:]),
    }
    meta = write_encoder_dir(model, tokenizer, out, metadata)
    log.info(
        "wrote %s: %d steps in %.0fs, loss %.3f -> %.3f",
        out,
        report.steps,
        report.seconds,
        meta["loss_first_tenth"],
        meta["loss_last_tenth"],
    )
    return report, meta


def check_no_leak(
    meta: dict[str, Any] | None, *, dataset: str, n_events: int, fraction: float = 0.2
) -> None:
    """Refuse to evaluate an encoder fine-tuned on events of the test part: its training
    prefix must lie within the first ``fraction`` of the same dataset's ``n_events``.

    Examples
    --------
    >>> meta = {"dataset": "ml-100k", "train_events": 20_000}
    >>> check_no_leak(meta, dataset="ml-100k", n_events=100_000)
    >>> check_no_leak(meta, dataset="ml-100k", n_events=50_000)
    Traceback (most recent call last):
    ...
    learner.exceptions.EncoderError: the encoder was fine-tuned on the first 20000 events ...
    """
    if meta is None or meta.get("dataset") != dataset:
        return
    allowed = split_index(n_events, fraction)
    trained = int(meta.get("train_events", 0))
    if trained > allowed:
        raise EncoderError(
            f"the encoder was fine-tuned on the first {trained} events of {dataset}, but only "
            f"the first {allowed} of these {n_events} are outside the test part; fine-tune "
            f"with --train-fraction {fraction} (and the same --events)"
        )
