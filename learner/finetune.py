"""Offline adaptation of the text encoder: contrastive training of its top layers on event pairs.

A user's consecutive interactions make training pairs ``(text of an item, text of the next item
the same user touched)``. The top ``layers`` transformer layers are trained (everything else,
embeddings included, stays frozen and bit-identical) with a symmetric InfoNCE loss over
in-batch negatives, on the same mean-pooled, L2-normalised output that ``TextEncoder`` uses, so
the trained model drops in as an encoder directory. Everything random draws from one
``torch.Generator``, and the model runs without dropout, so a seeded run is reproducible.

The module does no I/O: it takes a loaded model and tokenizer and events; ``consumer.finetuning``
loads, saves and reports.

Examples
--------
>>> from learner.types import Event
>>> evs = [Event("1", "u", "a", "click", None, 1), Event("2", "u", "b", "click", None, 2),
...        Event("3", "v", "b", "click", None, 1), Event("4", "u", "a", "click", None, 3)]
>>> next_item_pairs(evs)
[('a', 'b'), ('b', 'a')]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from learner.encoder import mean_pool
from learner.evaluate import split_index
from learner.exceptions import EncoderError
from learner.types import Event

__all__ = [
    "FinetuneConfig",
    "FinetuneReport",
    "finetune",
    "freeze_all_but_top",
    "info_nce",
    "next_item_pairs",
    "train_prefix",
    "transformer_layers",
]

# Step callback: (step done, steps in all, loss of that step).
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (the ``freshrec finetune`` flags)."""

    layers: int = 2  # top transformer layers trained; the rest and the embeddings stay frozen
    epochs: int = 1
    batch_size: int = 64  # pairs per step; each pair's positive is every other pair's negative
    lr: float = 5e-5  # AdamW
    weight_decay: float = 0.01
    temperature: float = 0.05
    max_length: int = 64  # tokens per text (ml-100k texts are ~20)
    max_steps: int = 0  # stop after this many steps (0: run every epoch)
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneReport:
    """What a run did: steps, the loss of each step, what it trained, how long it took."""

    steps: int
    pairs: int
    losses: tuple[float, ...]
    trained: tuple[str, ...]  # names of the parameters that were trained
    seconds: float
    extra: Mapping[str, Any] = field(default_factory=dict)


def train_prefix(events: Sequence[Event], fraction: float) -> Sequence[Event]:
    """The first ``fraction`` of a stream (the same split as ``freshrec evaluate``'s tuning
    part), so that a model fine-tuned on it never saw an event of the test part.

    Examples
    --------
    >>> evs = [Event(str(i), "u", "a", "click", None, i) for i in range(10)]
    >>> [e.event_id for e in train_prefix(evs, 0.2)]
    ['0', '1']
    """
    return events[: split_index(len(events), fraction)]


def next_item_pairs(events: Sequence[Event]) -> list[tuple[str, str]]:
    """``(item, next item)`` of each user's consecutive events, in stream order (the order of
    each pair's second event); repeats of the same item make no pair."""
    last: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for ev in events:
        prev = last.get(ev.user_id)
        if prev is not None and prev != ev.item_id:
            pairs.append((prev, ev.item_id))
        last[ev.user_id] = ev.item_id
    return pairs


def transformer_layers(model: Any) -> torch.nn.ModuleList:
    """The stack of transformer layers of a Hugging Face encoder (BERT-like ``encoder.layer``,
    DistilBERT's ``transformer.layer``, or ``layers``)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            return obj
    raise EncoderError(f"cannot find the transformer layers of {type(model).__name__}")


def freeze_all_but_top(model: Any, layers: int) -> list[str]:
    """Freeze every parameter except those of the top ``layers`` transformer layers; returns
    the names of the trainable ones.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> m = BertModel(BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
    ...                          intermediate_size=16, vocab_size=30))
    >>> names = freeze_all_but_top(m, 1)
    >>> sorted({n.split(".")[2] for n in names})
    ['2']
    """
    stack = transformer_layers(model)
    if not 1 <= layers <= len(stack):
        raise EncoderError(f"layers must be between 1 and {len(stack)}, got {layers}")
    model.requires_grad_(False)
    top = stack[len(stack) - layers :]
    top.requires_grad_(True)
    trainable = {id(p) for p in top.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in trainable]


def info_nce(
    anchors: Tensor,
    positives: Tensor,
    temperature: float,
    anchor_keys: Tensor | None = None,
    positive_keys: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE over in-batch negatives for unit vectors ``anchors[i]``,
    ``positives[i]``: row ``i``'s positive is column ``i``, every other column a negative.

    Where keys are given, a column holding the same item as the right answer (a popular item
    twice in one batch) is not counted as a negative.

    Examples
    --------
    >>> e = torch.eye(3)
    >>> float(info_nce(e, e, 0.01)) < 1e-6 < float(info_nce(e, e.roll(1, 0), 0.01))
    True
    """
    logits = anchors @ positives.T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    forward, backward = logits, logits.T
    if positive_keys is not None:
        forward = forward.masked_fill(
            (positive_keys.unsqueeze(0) == positive_keys.unsqueeze(1)) & ~eye, float("-inf")
        )
    if anchor_keys is not None:
        backward = backward.masked_fill(
            (anchor_keys.unsqueeze(0) == anchor_keys.unsqueeze(1)) & ~eye, float("-inf")
        )
    ce = torch.nn.functional.cross_entropy
    return (ce(forward, target) + ce(backward, target)) / 2


def _embed(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Tensor:
    """Mean-pooled, L2-normalised embeddings as ``TextEncoder`` computes them, with grad."""
    device = next(model.parameters()).device
    ids, mask = _tokens(tokenizer, texts, max_length, device)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return mean_pool(hidden.float(), mask)


def _tokens(
    tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    batch = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


class _FrozenPrefix:
    """The frozen layers' output for each text, computed once: a step then runs only the
    trained top layers. The frozen part never changes, so this is exact, and it cuts a step's
    forward pass to ``layers / all layers`` of its cost (the backward pass is unchanged).

    Used only where the top layers reproduce the whole model's output (checked on a few texts
    at start) and the cache fits ``budget_bytes``; otherwise each step runs the whole model.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        texts: Sequence[str],
        layers: int,
        max_length: int,
        chunk: int = 128,
    ) -> None:
        self.model = model
        self.top = transformer_layers(model)[-layers:]
        self.device = next(model.parameters()).device
        self.rows: list[Tensor] = []
        cut = len(transformer_layers(model)) - layers
        with torch.no_grad():
            for a in range(0, len(texts), chunk):
                ids, mask = _tokens(tokenizer, texts[a : a + chunk], max_length, self.device)
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                hidden = out.hidden_states[cut]
                for r, n in enumerate(mask.sum(dim=1).tolist()):
                    self.rows.append(hidden[r, :n].clone())

    def embed(self, keys: Sequence[int]) -> Tensor:
        """Embeddings of the texts at positions ``keys``, through the top layers, with grad."""
        seqs = [self.rows[k] for k in keys]
        width = max(s.shape[0] for s in seqs)
        hidden = torch.zeros(
            (len(seqs), width, seqs[0].shape[1]), device=self.device, dtype=seqs[0].dtype
        )
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for r, s in enumerate(seqs):
            hidden[r, : s.shape[0]] = s
            mask[r, : s.shape[0]] = 1
        # An additive mask of shape (batch, 1, 1, keys): what BERT-like layers add to their
        # attention scores, eager or SDPA.
        additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=self.device)
        additive = additive.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)[:, None, None]
        for layer in self.top:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return mean_pool(hidden.float(), mask)


def _prefix_cache(
    model: Any, tokenizer: Any, texts: Sequence[str], cfg: FinetuneConfig, budget_bytes: int
) -> _FrozenPrefix | None:
    """A :class:`_FrozenPrefix` of ``texts`` if it fits and agrees with the whole model."""
    width = int(model.config.hidden_size)
    if len(texts) * cfg.max_length * width * 4 > budget_bytes:
        return None
    try:
        cache = _FrozenPrefix(model, tokenizer, texts, cfg.layers, cfg.max_length)
        probe = list(range(min(4, len(texts))))
        with torch.no_grad():
            ours = cache.embed(probe)
            theirs = _embed(model, tokenizer, [texts[k] for k in probe], cfg.max_length)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None  # a model whose layers take other arguments: run it whole
    return cache if torch.allclose(ours, theirs, atol=1e-4) else None


def finetune(
    model: Any,
    tokenizer: Any,
    texts: Mapping[str, str],
    pairs: Sequence[tuple[str, str]],
    config: FinetuneConfig | None = None,
    *,
    progress: Progress | None = None,
    cache_bytes: int = 2 << 30,
) -> FinetuneReport:
    """Train the top ``config.layers`` layers of ``model`` in place on ``pairs`` of item ids
    (``texts`` maps each id to its text) with :func:`info_nce`; returns what it did.

    Each step encodes each distinct item of its batch once; the frozen layers' output of every
    text is computed once up front when it fits ``cache_bytes`` (see :class:`_FrozenPrefix`).
    Pairs naming an item without text are dropped. The model is left in ``eval()`` mode with
    nothing requiring grad.
    """
    cfg = config or FinetuneConfig()
    if cfg.batch_size < 2:
        raise EncoderError("batch_size must be at least 2: the negatives are the other pairs")
    usable = [(a, b) for a, b in pairs if a in texts and b in texts]
    if len(usable) < 2:
        raise EncoderError(f"need at least 2 training pairs, got {len(usable)}")
    trained = freeze_all_but_top(model, cfg.layers)
    params = [p for p in model.parameters() if p.requires_grad]
    # Dropout would draw from torch's global generator; without it a seeded run repeats exactly.
    model.eval()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    ids = sorted({i for pair in usable for i in pair})
    key_of = {item: k for k, item in enumerate(ids)}
    a_keys = torch.tensor([key_of[a] for a, _ in usable])
    b_keys = torch.tensor([key_of[b] for _, b in usable])
    t0 = time.perf_counter()
    cache = _prefix_cache(model, tokenizer, [texts[i] for i in ids], cfg, cache_bytes)
    per_epoch = len(usable) // cfg.batch_size or 1
    total = per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    losses: list[float] = []
    step = 0
    while step < total:
        order = torch.randperm(len(usable), generator=generator)
        for b in range(per_epoch):
            if step >= total:
                break
            sel = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            ka, kb = a_keys[sel], b_keys[sel]
            distinct, where = torch.unique(torch.cat([ka, kb]), return_inverse=True)
            keys = distinct.tolist()
            if cache is not None:
                vectors = cache.embed(keys)
            else:
                vectors = _embed(model, tokenizer, [texts[ids[k]] for k in keys], cfg.max_length)
            n = sel.numel()
            loss = info_nce(vectors[where[:n]], vectors[where[n:]], cfg.temperature, ka, kb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, total, losses[-1])
    model.requires_grad_(False)
    return FinetuneReport(
        steps=step,
        pairs=len(usable),
        losses=tuple(losses),
        trained=tuple(trained),
        seconds=time.perf_counter() - t0,
        extra={"frozen_prefix_cached": cache is not None},
    )
