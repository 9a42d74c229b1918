"""Errors raised by the learner; all derive from :class:`FreshrecError`."""

from __future__ import annotations

__all__ = ["EncoderError", "FreshrecError", "LearnerError", "UnknownItemError"]


class FreshrecError(Exception):
    """Root of every error freshrec raises on purpose."""


class LearnerError(FreshrecError):
    """A problem inside the model."""


class EncoderError(LearnerError):
    """The encoder could not be loaded or is not frozen."""


class UnknownItemError(LearnerError, KeyError):
    """An item id that the item table does not hold."""
