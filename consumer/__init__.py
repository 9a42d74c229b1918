"""The input side and the process: config, codecs, sources, DLQ, the Worker loop and the CLI."""

from __future__ import annotations

__all__: list[str] = []
