"""CUDA against CPU for the learner: same results within tolerance, and how fast each runs.

Run by ``bench/gpu.sh`` on a GPU machine. Prints one table; exits 1 if a check fails.
``--device cpu`` runs every step with the CPU in the accelerator's place, so that the check
itself is exercised where there is no GPU (``make test`` does, on a small replay): its figures
then compare the CPU with itself and mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from consumer.datasets import load_ml100k_events, load_ml100k_items
from learner.encoder import TextEncoder
from learner.recommender import ModelConfig, Recommender
from learner.types import Event


class FixedEncoder:
    """Serves precomputed embeddings, so both devices' learners start from identical inputs."""

    def __init__(self, texts: Sequence[str], vectors: Tensor, device: str) -> None:
        self.name = "fixed"
        self.dim = int(vectors.shape[1])
        self.device = torch.device(device)
        self._by_text = {t: v for t, v in zip(texts, vectors, strict=True)}

    def encode(self, texts: Sequence[str]) -> Tensor:
        return torch.stack([self._by_text[t] for t in texts]).to(self.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _encode_rate(enc: TextEncoder, texts: list[str], device: str, repeats: int = 3) -> float:
    enc.encode(texts)  # warm-up over every text: each new batch shape is slow the first time
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        enc.encode(texts)
        _sync(device)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _long_texts(n: int) -> list[str]:
    words = [
        "space",
        "ship",
        "robot",
        "love",
        "paris",
        "rain",
        "war",
        "peace",
        "music",
        "garden",
        "kitchen",
        "river",
        "mountain",
        "city",
        "night",
        "day",
        "story",
        "family",
        "friend",
        "journey",
        "secret",
    ]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(words), (n, 90), generator=g).tolist()
    return [" ".join(words[i] for i in row) for row in idx]


def _replay(rec: Recommender, events: list[Event], batch: int, k: int) -> tuple[float, float]:
    """Test-then-train over micro-batches; returns (HR@k, events/s)."""
    hits = trials = 0
    _sync(str(rec.device))
    t0 = time.perf_counter()
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        users = list(dict.fromkeys(ev.user_id for ev in chunk))
        lists = {r.user_id: {it.item_id for it in r.items} for r in rec.recommend(users, k)}
        for ev in chunk:
            trials += 1
            hits += ev.item_id in lists[ev.user_id]
        rec.learn(chunk)
    _sync(str(rec.device))
    return hits / max(1, trials), len(events) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--long-texts", type=int, default=20_000)
    ap.add_argument(
        "--items", type=int, default=0, help="the first N ml-100k items only (0: all of them)"
    )
    ap.add_argument(
        "--device", default="cuda", help="the device checked against the CPU (default: cuda)"
    )
    args = ap.parse_args()
    dev = args.device
    cuda = dev.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    acc = "CUDA" if cuda else dev.upper()  # the accelerator's name in the table
    items = load_ml100k_items(args.data)
    if args.items:
        items = items[: args.items]
    kept = {it.item_id for it in items}
    events = [ev for ev in load_ml100k_events(args.data) if ev.item_id in kept][: args.events]
    texts = [it.text for it in items]
    rows: list[tuple[str, str, str]] = []
    ok = True

    cpu_enc = TextEncoder(args.model, device="cpu", batch_size=256)
    gpu_enc = TextEncoder(args.model, device=dev, batch_size=1024 if cuda else 256)
    assert not any(p.requires_grad for p in gpu_enc.model.parameters())
    e_cpu = cpu_enc.encode(texts)
    e_gpu = gpu_enc.encode(texts).cpu()
    cos = (e_cpu * e_gpu).sum(-1)
    agree = float(cos.min()) > 0.99
    ok &= agree
    rows.append(
        (
            f"encoder cosine {acc}{' bf16' if cuda else ''} vs CPU fp32 (ml-100k titles)",
            f"min {float(cos.min()):.4f} mean {float(cos.mean()):.5f}",
            "ok" if agree else "FAIL (< 0.99)",
        )
    )
    rows.append(
        (
            "encode ml-100k titles, CPU fp32",
            f"{_encode_rate(cpu_enc, texts, 'cpu', 1):,.0f} items/s",
            "",
        )
    )
    rows.append(
        (f"encode ml-100k titles, {acc}", f"{_encode_rate(gpu_enc, texts, dev):,.0f} items/s", "")
    )
    long = _long_texts(args.long_texts)
    rows.append(
        (
            f"encode ~128-token texts, {acc}",
            f"{_encode_rate(gpu_enc, long, dev):,.0f} items/s",
            f"{len(long)} texts",
        )
    )
    rows.append(
        (
            "encode ~128-token texts, CPU fp32",
            f"{_encode_rate(cpu_enc, long[:1000], 'cpu', 1):,.0f} items/s",
            f"{len(long[:1000])} texts",
        )
    )

    results = []
    for device in ("cpu", dev):
        rec = Recommender(FixedEncoder(texts, e_cpu, device), ModelConfig())
        rec.upsert_items(items)
        hr, eps = _replay(rec, events, args.batch, 10)
        users = sorted({ev.user_id for ev in events})[: args.users]
        results.append((hr, eps, rec.recommend(users, 10)))
        rows.append(
            (
                f"learner replay {len(events)} events, batch {args.batch}, {device}",
                f"{eps:,.0f} events/s",
                f"HR@10 {hr:.4f}",
            )
        )
    (hr_c, _, lists_c), (hr_g, _, lists_g) = results
    overlap = statistics.mean(
        len({i.item_id for i in a.items} & {i.item_id for i in b.items}) / max(1, len(a.items))
        for a, b in zip(lists_c, lists_g, strict=True)
    )
    same_hr = abs(hr_c - hr_g) <= 0.01
    ok &= overlap >= 0.9 and same_hr
    rows.append(
        (
            f"top-10 overlap {acc} vs CPU after replay",
            f"{overlap:.3f}",
            "ok" if overlap >= 0.9 else "FAIL (< 0.9)",
        )
    )
    rows.append(
        (
            f"HR@10 difference {acc} vs CPU",
            f"{abs(hr_c - hr_g):.4f}",
            "ok" if same_hr else "FAIL (> 0.01)",
        )
    )

    n_items = 100_000 if cuda else 10_000
    dtype = torch.float16 if cuda else torch.float32
    x = torch.nn.functional.normalize(torch.randn(n_items, 384, device=dev), dim=-1).to(dtype)
    q = torch.nn.functional.normalize(torch.randn(1024, 384, device=dev), dim=-1).to(dtype)
    times = []
    repeats = 20 if cuda else 6
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        torch.topk(q @ x.T, 10, dim=-1)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    rows.append(
        (
            f"exact scores + top-10, 1024 users x {n_items // 1000}k items, "
            f"{str(dtype).removeprefix('torch.')}",
            f"{statistics.median(times[5:]) * 1000:.2f} ms",
            f"median of {repeats - 5}",
        )
    )

    # The worker's GPU series (serving/gpu.py) read from the real device: memory must show
    # the tensors above; utilisation needs NVML (nvidia-ml-py) and is reported if present.
    if cuda:
        from serving.gpu import GpuCollector

        series = {s.name: s.value for m in GpuCollector(dev).collect() for s in m.samples}
        memory_ok = series.get("freshrec_gpu_memory_used_bytes", 0.0) > 0
        ok &= memory_ok
        rows.append(
            (
                "worker GPU series (freshrec_gpu_*)",
                ", ".join(f"{k.removeprefix('freshrec_gpu_')} {v:,.2f}" for k, v in series.items()),
                "ok" if memory_ok else "FAIL (no memory in use)",
            )
        )

    name = torch.cuda.get_device_name(0) if cuda else f"{acc} (a smoke run: no accelerator)"
    print(f"\n## freshrec GPU check on {name}\n")
    print("| what | figure | note |\n|---|---|---|")
    for what, figure, note in rows:
        print(f"| {what} | {figure} | {note} |")
    print("\nRESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
