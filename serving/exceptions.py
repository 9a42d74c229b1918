"""Errors of the output side; all derive from :class:`FreshrecError`."""

from __future__ import annotations

from learner.exceptions import FreshrecError

__all__ = ["PublishError", "ServingError"]


class ServingError(FreshrecError):
    """A problem on the output side."""


class PublishError(ServingError):
    """Records could not be delivered; offsets must not be committed past them."""
