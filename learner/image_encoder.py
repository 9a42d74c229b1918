"""The optional frozen image encoder: a Hugging Face vision model that turns item images into
unit vectors, with a content-hash cache.

Any vision model directory that ``AutoImageProcessor`` and ``AutoModel`` load works (ViT,
DINOv2, ...); a CLIP directory loads its vision tower with its projection
(``CLIPVisionModelWithProjection``), so the vectors are CLIP's image embeddings. Frozen like
the text encoder: ``eval()``, no parameter requires grad, ``torch.inference_mode()``. Image
bytes are decoded with Pillow (a dependency of matplotlib); bytes that do not decode to an
image give no vector and a reason instead of an error, so one bad image never stops a worker.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from learner.encoder import _dir_fingerprint, fill_cache, resolve_device
from learner.exceptions import EncoderError

__all__ = ["CachedImageEncoder", "ImageEncoder", "ImageEncoding", "decode_image"]

# Images per forward pass when the caller gives none.
_DEFAULT_BATCH = {"cpu": 32, "cuda": 256}
# Larger decoded images are refused: a small compressed file can expand to gigabytes of pixels
# (a "decompression bomb"); Pillow's own limit only warns below twice this.
MAX_PIXELS = 64_000_000
# A whole CLIP directory, or its vision tower saved on its own: both load the tower with its
# projection, so the vectors are CLIP's image embeddings.
_CLIP_TYPES = ("clip", "clip_vision_model")


@dataclass(frozen=True)
class ImageEncoding:
    """What :meth:`ImageEncoder.encode` returns: ``vectors`` ``(n, dim)`` on the encoder's
    device (zero rows for images that failed), ``ok`` ``(n,)`` bool, and for each input
    ``None`` or why it failed."""

    vectors: Tensor
    ok: Tensor
    errors: tuple[str | None, ...]


def decode_image(data: bytes) -> Any:
    """Decode image bytes into an RGB Pillow image; :class:`ValueError` with the reason if the
    bytes are not an image Pillow can read (or one over ``MAX_PIXELS`` pixels).

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, format="PNG")
    >>> decode_image(buf.getvalue()).size, decode_image(buf.getvalue()).mode
    ((4, 3), 'RGB')
    >>> decode_image(b"not an image")
    Traceback (most recent call last):
    ...
    ValueError: not an image Pillow can read: cannot identify image file
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"image of {width}x{height} pixels is over {MAX_PIXELS}")
                return img.convert("RGB")  # forces the full decode, inside the try
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read: cannot identify image file") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, Warning) as err:
        # Truncated or corrupt data raise OSError (or SyntaxError in some plugins).
        raise ValueError(f"image does not decode: {str(err)[:200]}") from None


class ImageEncoder:
    """A frozen Hugging Face vision model: images in, L2-normalised vectors out.

    The vector is CLIP's projected image embedding for CLIP directories and the final [CLS]
    token (after the model's last layer norm) for the others, as ViT and DINOv2 are trained
    to use it.

    Examples
    --------
    >>> enc = ImageEncoder("path/to/vit", device="cpu")  # doctest: +SKIP
    >>> enc.encode([png_bytes, b"junk"]).ok.tolist()  # doctest: +SKIP
    [True, False]
    """

    def __init__(
        self, model_dir: str | Path, *, device: str = "auto", batch_size: int | None = None
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import PIL  # noqa: F401
        except ImportError as err:  # pragma: no cover - matplotlib depends on Pillow
            raise EncoderError("the image encoder needs Pillow (pip install pillow)") from err
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise EncoderError(f"image encoder directory {self.model_dir} does not exist")
        self.device = resolve_device(device)
        on_cuda = self.device.type == "cuda"
        self.batch_size = batch_size or _DEFAULT_BATCH["cuda" if on_cuda else "cpu"]
        try:
            config = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True)
            with warnings.catch_warnings():
                # Without torchvision transformers falls back to its Pillow processors and says so.
                warnings.simplefilter("ignore")
                self.processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call,unused-ignore]
                    str(self.model_dir), local_files_only=True
                )
            dtype = torch.float32
            if on_cuda:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if config.model_type in _CLIP_TYPES:
                from transformers import CLIPVisionModelWithProjection

                model: Any = CLIPVisionModelWithProjection.from_pretrained(
                    str(self.model_dir), local_files_only=True, dtype=dtype
                )
            else:
                model = AutoModel.from_pretrained(
                    str(self.model_dir), local_files_only=True, dtype=dtype
                )
        except (OSError, ValueError) as err:
            raise EncoderError(f"cannot load a vision model from {self.model_dir}: {err}") from err
        self.model = model.to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        if any(p.requires_grad for p in self.model.parameters()):
            raise EncoderError("image encoder parameters still require grad after freezing")
        self.dim = _output_dim(self.model.config)
        self.name = f"{self.model_dir.name}@{_dir_fingerprint(self.model_dir)}"

    def encode(self, images: Sequence[bytes]) -> ImageEncoding:
        """Decode and embed ``images``; those that do not decode get a zero row and a reason."""
        out = torch.zeros((len(images), self.dim), dtype=torch.float32, device=self.device)
        ok = torch.zeros(len(images), dtype=torch.bool, device=self.device)
        errors: list[str | None] = [None] * len(images)
        decoded: list[tuple[int, Any]] = []
        for i, data in enumerate(images):
            try:
                decoded.append((i, decode_image(data)))
            except ValueError as err:
                errors[i] = str(err)
        with torch.inference_mode():
            for start in range(0, len(decoded), self.batch_size):
                chunk = decoded[start : start + self.batch_size]
                pixels = self.processor(images=[img for _, img in chunk], return_tensors="pt")
                values = pixels["pixel_values"].to(self.device, self.model.dtype)
                where = torch.tensor([i for i, _ in chunk], device=self.device)
                out[where] = self._embed(values)
                ok[where] = True
        return ImageEncoding(out, ok, tuple(errors))

    def _embed(self, pixel_values: Tensor) -> Tensor:
        result = self.model(pixel_values=pixel_values)
        vectors = getattr(result, "image_embeds", None)
        if vectors is None:
            vectors = result.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(vectors.float(), dim=-1)


def _output_dim(config: Any) -> int:
    """Width of the vectors :meth:`ImageEncoder._embed` returns."""
    projection: Any = getattr(config, "projection_dim", None)
    if projection is not None and config.model_type in _CLIP_TYPES:
        return int(projection)
    return int(config.hidden_size)


class CachedImageEncoder:
    """Wraps an :class:`ImageEncoder` with a content-hash cache keyed by (model, image bytes):
    unchanged image bytes are decoded and encoded once, failures included (a bad image is not
    decoded again). Keys are a namespace apart from the text cache's.

    Examples
    --------
    >>> class Fake:
    ...     name, dim, device, calls = "fake", 2, torch.device("cpu"), 0
    ...     def encode(self, images):
    ...         Fake.calls += len(images)
    ...         good = torch.tensor([b != b"bad" for b in images])
    ...         return ImageEncoding(torch.ones(len(images), 2) * good.unsqueeze(-1), good,
    ...                              tuple(None if g else "bad" for g in good.tolist()))
    >>> enc = CachedImageEncoder(Fake())
    >>> _ = enc.encode([b"a", b"bad"]); r = enc.encode([b"a", b"bad", b"c"])
    >>> Fake.calls, enc.hits, r.ok.tolist(), r.errors
    (3, 2, [True, False, True], (None, 'bad', None))
    """

    def __init__(self, encoder: ImageEncoder, max_entries: int = 1_000_000) -> None:
        self.encoder = encoder
        self.max_entries = max_entries
        self._cache: dict[str, tuple[Tensor, str | None]] = {}
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

    def key(self, image: bytes) -> str:
        h = hashlib.sha256(b"image\0")
        h.update(self.encoder.name.encode())
        h.update(b"\0")
        h.update(image)
        return h.hexdigest()

    def encode(self, images: Sequence[bytes]) -> ImageEncoding:
        """Embed ``images``, decoding and encoding only those not seen before."""
        keys = [self.key(b) for b in images]

        def compute(firsts: list[int]) -> list[tuple[Tensor, str | None]]:
            fresh = self.encoder.encode([images[i] for i in firsts])
            return list(zip(fresh.vectors.cpu(), fresh.errors, strict=True))

        found, missed = fill_cache(self._cache, keys, compute, self.max_entries)
        self.hits += len(images) - missed
        self.misses += missed
        if not images:
            empty = torch.empty((0, self.dim), device=self.device)
            return ImageEncoding(empty, torch.zeros(0, dtype=torch.bool), ())
        vecs = torch.stack([found[k][0] for k in keys]).to(self.device)
        errors = tuple(found[k][1] for k in keys)
        ok = torch.tensor([e is None for e in errors], device=self.device)
        return ImageEncoding(vecs, ok, errors)
