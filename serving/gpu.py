"""GPU metrics, read at scrape time: utilisation and memory of the device the encoder uses.

A Prometheus collector rather than gauges the worker loop sets: the figures are fresh on
every scrape and the loop does no work for them. Registered only when the encoder runs on
CUDA, so a CPU worker exports no GPU series at all.

Examples
--------
>>> class FakeCuda:  # stands in for torch.cuda on a machine without a GPU
...     def utilization(self, device): return 40
...     def mem_get_info(self, device): return (6 << 30, 8 << 30)
>>> [(s.name, s.labels, s.value) for m in GpuCollector("cuda:0", FakeCuda()).collect()
...  for s in m.samples]  # doctest: +NORMALIZE_WHITESPACE
[('freshrec_gpu_utilization_ratio', {'device': 'cuda:0'}, 0.4),
 ('freshrec_gpu_memory_used_bytes', {'device': 'cuda:0'}, 2147483648.0)]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GpuCollector"]

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """``freshrec_gpu_utilization_ratio{device}`` (0-1, the share of the last sample period
    a kernel ran; needs NVML through the ``nvidia-ml-py`` package, left out without it) and
    ``freshrec_gpu_memory_used_bytes{device}`` (device-wide, all processes)."""

    def __init__(self, device: str, cuda: Any = None) -> None:
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.device = device
        self._cuda = cuda
        self._warned = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = [self.device]
        try:
            percent = self._cuda.utilization(self.device)
        except Exception as err:  # NVML missing or failing: leave that series out
            if not self._warned:
                log.warning("GPU utilisation not exported: %s", err)
                self._warned = True
        else:
            util = GaugeMetricFamily(
                "freshrec_gpu_utilization_ratio",
                "Share of time a kernel ran on the encoder's GPU (NVML)",
                labels=["device"],
            )
            util.add_metric(labels, percent / 100.0)
            yield util
        free, total = self._cuda.mem_get_info(self.device)
        memory = GaugeMetricFamily(
            "freshrec_gpu_memory_used_bytes",
            "Memory in use on the encoder's GPU, all processes",
            labels=["device"],
        )
        memory.add_metric(labels, float(total - free))
        yield memory
