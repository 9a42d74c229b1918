"""Image modality cost: image encoder throughput and what fusion adds to the head, on CPU.

Quality is not measured here: MovieLens-100K has no images. What is measured:

- ``encode``: ``ImageEncoder.encode`` on PNG bytes (64x48 pixels, a few colours and stripes),
  all of it: Pillow decode, the image processor (resize, normalise) and the forward pass, for
  randomly initialised ViTs written to a temporary directory (nothing is downloaded): the tiny
  test ViT (2 layers, width 32, 32x32 pixels) and, unless ``--no-base``, a ViT-B/16-shaped one
  (12 layers, width 768, 224x224 pixels: the cost of a real ViT-B/16 or CLIP ViT-B/16 tower).
  ``decode+process`` times Pillow and the processor alone.
- ``fuse``: ``learner.fusion.fuse`` over a whole catalog (``--catalog`` rows, text width 384),
  the work an image-enabled head adds to every full re-scoring of the catalog.
- ``learn``: ``Recommender.learn`` over micro-batches of 500 events on a catalog of 2,000 items
  with random 384-d text vectors, text only against text + images (image width 768, every
  item with an image), events/s: what fusion adds to the head's online step.

Usage: ``.venv/bin/python bench/image.py [--images N] [--catalog N] [--no-base] [--json FILE]``
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from learner.fusion import fuse
from learner.image_encoder import ImageEncoder, ImageEncoding, decode_image
from learner.recommender import ModelConfig, Recommender
from learner.types import Event, Item

TEXT_DIM = 384


def _png(i: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 48), ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256))
    draw = ImageDraw.Draw(img)
    for s in range(i % 6):
        draw.rectangle([8 * s + 2, 0, 8 * s + 4, 48], fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_vit(path: Path, *, hidden: int, layers: int, heads: int, size: int, patch: int) -> Path:
    import warnings

    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=size,
        patch_size=patch,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ViTModel(config).save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path


def _median_rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return items / statistics.median(times)


def _log(message: str) -> None:
    print(f"[bench/image] {message}", file=sys.stderr, flush=True)


def bench_encoders(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    images = [_png(i) for i in range(args.images)]
    rows: list[dict[str, Any]] = []
    shapes = [("tiny ViT (2x32, 32px)", dict(hidden=32, layers=2, heads=2, size=32, patch=8))]
    if not args.no_base:
        shapes.append(
            (
                "ViT-B/16 shape (12x768, 224px)",
                dict(hidden=768, layers=12, heads=12, size=224, patch=16),
            )
        )
    for label, shape in shapes:
        path = _write_vit(tmp / label.split()[0], **shape)
        enc = ImageEncoder(path, device="cpu", batch_size=args.batch_size)
        n = args.images if shape["hidden"] < 100 else min(args.images, args.base_images)
        batch = images[:n]
        out: list[ImageEncoding] = []
        _log(f"{label}: {n} images")

        def encode(
            b: Sequence[bytes] = batch, e: ImageEncoder = enc, o: list[ImageEncoding] = out
        ) -> None:
            o.append(e.encode(b))

        rate = _median_rate(encode, n, args.repeats)
        assert bool(out[-1].ok.all())

        def process(b: Sequence[bytes] = batch, e: ImageEncoder = enc) -> None:
            decoded = [decode_image(x) for x in b]
            for i in range(0, len(decoded), e.batch_size):
                e.processor(images=decoded[i : i + e.batch_size], return_tensors="pt")

        prep = _median_rate(process, n, args.repeats)
        params = sum(p.numel() for p in enc.model.parameters())
        rows.append(
            {
                "what": "encode",
                "model": label,
                "params": params,
                "dim": enc.dim,
                "images": n,
                "batch": enc.batch_size,
                "images_per_s": round(rate, 1),
                "decode_process_per_s": round(prep, 1),
            }
        )
    return rows


def bench_fuse(args: argparse.Namespace) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    n = args.catalog
    text = torch.randn(n, TEXT_DIM, generator=g)
    present = torch.rand(n, generator=g) < 0.5
    for image_dim in (32, 768):
        image = torch.randn(n, image_dim, generator=g)
        proj = torch.randn(image_dim, TEXT_DIM, generator=g)
        gate = torch.randn(TEXT_DIM, generator=g)

        def fused(i: Tensor = image, p: Tensor = proj, w: Tensor = gate) -> Tensor:
            with torch.no_grad():
                return fuse(text, i, present, p, w)

        rate = _median_rate(fused, n, args.repeats)
        rows.append(
            {
                "what": "fuse",
                "image_dim": image_dim,
                "rows": n,
                "ms_per_catalog": round(1000 * n / rate, 2),
                "rows_per_s": round(rate),
            }
        )
    return rows


class _Vectors:
    """Random unit text vectors keyed by the item number in the text."""

    name, dim, device = "random-384", TEXT_DIM, torch.device("cpu")

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.table = torch.nn.functional.normalize(torch.randn(n, TEXT_DIM, generator=g), dim=-1)

    def encode(self, texts: Sequence[str]) -> Tensor:
        return self.table[[int(t[1:]) for t in texts]]


class _ImageVectors:
    """Random unit image vectors from the image bytes (the item number), 768-d."""

    name, dim = "random-768", 768

    def encode(self, images: Sequence[bytes]) -> ImageEncoding:
        g = torch.Generator().manual_seed(2)
        table = torch.nn.functional.normalize(torch.randn(4096, self.dim, generator=g), dim=-1)
        idx = [int(b) % 4096 for b in images]
        return ImageEncoding(table[idx], torch.ones(len(idx), dtype=torch.bool), (None,) * len(idx))


def bench_learn(args: argparse.Namespace) -> list[dict[str, Any]]:
    n_items, n_events, batch = 2000, args.events, 500
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, 300, (n_events,), generator=g).tolist()
    items = torch.randint(0, n_items, (n_events,), generator=g).tolist()
    events = [
        Event(f"e{k}", f"u{u}", f"i{i}", "click", None, 1_700_000_000_000 + 1000 * k)
        for k, (u, i) in enumerate(zip(users, items, strict=True))
    ]
    rows: list[dict[str, Any]] = []
    for label in ("text only", "text + image"):
        with_images = label != "text only"
        rec = Recommender(
            _Vectors(n_items),
            ModelConfig(ann_min_items=0),
            image_encoder=_ImageVectors() if with_images else None,
        )
        rec.upsert_items(
            [
                Item(f"i{i}", f"v{i}", image=str(i).encode() if with_images else None)
                for i in range(n_items)
            ]
        )
        t0 = time.perf_counter()
        for a in range(0, n_events, batch):
            rec.learn(events[a : a + batch])
        rec.recommend([f"u{u}" for u in range(300)], k=10, explain=False)
        elapsed = time.perf_counter() - t0
        rows.append(
            {
                "what": "learn",
                "model": label,
                "events": n_events,
                "batch": batch,
                "events_per_s": round(n_events / elapsed, 1),
                "head_steps": rec.head.steps,
            }
        )
        _log(f"learn {label}: {rows[-1]['events_per_s']} events/s")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--images", type=int, default=512, help="images for the tiny ViT")
    ap.add_argument("--base-images", type=int, default=64, help="images for the ViT-B/16 shape")
    ap.add_argument("--no-base", action="store_true", help="skip the ViT-B/16-shaped model")
    ap.add_argument("--batch-size", type=int, default=32, help="images per encoder batch")
    ap.add_argument("--catalog", type=int, default=100_000, help="rows fused by `fuse`")
    ap.add_argument("--events", type=int, default=10_000, help="events learned by `learn`")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-image-") as tmp:
        rows = bench_encoders(args, Path(tmp))
    rows += bench_fuse(args)
    rows += bench_learn(args)
    print("\n| model | params | dim | images | images/s (all) | decode+process/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "encode":
            print(f"| {r['model']} | {r['params']:,} | {r['dim']} | {r['images']} | "
                  f"{r['images_per_s']} | {r['decode_process_per_s']} |")  # fmt: skip
    print("\n| fuse: image dim | rows | ms per catalog | rows/s |")
    print("|---|---|---|---|")
    for r in rows:
        if r["what"] == "fuse":
            cells = [r["image_dim"], f"{r['rows']:,}", r["ms_per_catalog"], f"{r['rows_per_s']:,}"]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    print("\n| learn: model | events | events/s | head steps |")
    print("|---|---|---|---|")
    for r in rows:
        if r["what"] == "learn":
            print(f"| {r['model']} | {r['events']:,} | {r['events_per_s']} | {r['head_steps']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
