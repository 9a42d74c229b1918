"""Image fusion: how an item's image embedding joins its text embedding in the head.

``e_v = t_v + tanh(g) ⊙ (ι_v P)`` for an item with an image, ``e_v = t_v`` for one without.
``t_v`` is the frozen text embedding, ``ι_v`` the frozen image embedding, ``P`` a learned
projection from the image space into the text space and ``g`` a learned per-dimension gate.
The gate starts at zero, so an untrained head ranks exactly as the text-only one does and the
image path earns its weight through the BPR steps (the zero-initialised gated residual of
Flamingo's cross-attention layers). Items without an image take the text path unchanged, so a
catalog may mix both.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["FUSION_PARAMS", "ImageFusion", "ItemImages", "fuse"]

# Names of the fusion's parameters in the head's shared state (consumer/model_sync.py).
FUSION_PARAMS = ("image_proj", "image_gate")


class ItemImages(NamedTuple):
    """The image side of an item table: ``vectors`` ``(rows, image_dim)`` (zero where there
    is no image) and ``present`` ``(rows,)`` bool."""

    vectors: Tensor
    present: Tensor


def fuse(text: Tensor, image: Tensor, present: Tensor, proj: Tensor, gate: Tensor) -> Tensor:
    """Fused content vectors: ``text + tanh(gate) * (image @ proj)`` where ``present``, else
    ``text`` itself (bit for bit).

    Examples
    --------
    >>> text, image = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0], [1.0]])
    >>> proj, present = torch.tensor([[2.0, 2.0]]), torch.tensor([True, False])
    >>> fuse(text, image, present, proj, torch.zeros(2)).tolist()  # closed gate: text only
    [[1.0, 0.0], [0.0, 1.0]]
    >>> gate = torch.atanh(torch.tensor([0.5, 0.5]))
    >>> fuse(text, image, present, proj, gate).round(decimals=4).tolist()
    [[2.0, 1.0], [0.0, 1.0]]
    >>> fuse(text[None], image[None], present[None], proj, gate).shape  # (batch, negatives, dim)
    torch.Size([1, 2, 2])
    """
    # Only rows with an image are projected (a catalog may have few), and the others are
    # copied unchanged. Any leading shape works: (rows, dim) or (batch, negatives, dim).
    flat = text.reshape(-1, text.shape[-1])
    where = torch.nonzero(present.reshape(-1)).squeeze(-1)
    images = image.reshape(-1, image.shape[-1]).index_select(0, where)
    added = torch.tanh(gate) * (images @ proj)
    return flat.index_add(0, where, added).reshape(text.shape)


class ImageFusion:
    """The learned parameters of :func:`fuse`: ``proj`` ``(image_dim, dim)`` and ``gate``
    ``(dim,)``.

    ``proj`` starts random with rows of about unit norm in the text space (so that a gate of 1
    weighs image and text alike), ``gate`` at zero.

    Examples
    --------
    >>> f = ImageFusion(dim=3, image_dim=2)
    >>> f.proj.shape, f.gate.shape, f.proj.requires_grad
    (torch.Size([2, 3]), torch.Size([3]), True)
    >>> text = torch.eye(3)[:1]
    >>> bool(torch.equal(f(text, torch.ones(1, 2), torch.tensor([True])), text))
    True
    """

    def __init__(
        self, dim: int, image_dim: int, *, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        self.dim = dim
        self.image_dim = image_dim
        # Its own generator: switching images on leaves the head's random stream (its U and
        # its negative sampling) exactly as it is without them.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        proj = torch.randn(image_dim, dim, generator=generator) / dim**0.5
        self.proj = torch.nn.Parameter(proj.to(device))
        self.gate = torch.nn.Parameter(torch.zeros(dim, device=device))

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable tensors, for the head's optimiser."""
        return [self.proj, self.gate]

    def __call__(self, text: Tensor, image: Tensor, present: Tensor) -> Tensor:
        return fuse(text, image, present, self.proj, self.gate)

    def shared_state(self) -> dict[str, np.ndarray]:
        """``image_proj`` and ``image_gate`` as float32 arrays (see ``BilinearHead``)."""
        return {
            "image_proj": self.proj.detach().cpu().numpy().astype(np.float32, copy=True),
            "image_gate": self.gate.detach().cpu().numpy().astype(np.float32, copy=True),
        }

    def param(self, name: str) -> torch.nn.Parameter:
        """The parameter a shared-state name refers to."""
        return {"image_proj": self.proj, "image_gate": self.gate}[name]
