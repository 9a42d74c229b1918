"""Errors of the input side and the process; all derive from :class:`FreshrecError`."""

from __future__ import annotations

from learner.exceptions import FreshrecError

__all__ = [
    "ConfigError",
    "ConsumerError",
    "DecodeError",
    "FreshrecError",
    "KafkaSecurityError",
    "SourceError",
]


class ConsumerError(FreshrecError):
    """A problem on the input side."""


class ConfigError(ConsumerError):
    """A setting has a value the worker cannot use."""


class KafkaSecurityError(ConsumerError):
    """Kafka refused the login, or the TLS handshake with a broker failed."""


class SourceError(ConsumerError):
    """The event source failed (for example, a commit was refused)."""


class DecodeError(ConsumerError):
    """A record breaks the contract; ``reason`` is a short machine-readable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
