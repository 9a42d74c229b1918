"""The online head: a bilinear scorer over frozen content embeddings, mixed with other signals
(item-to-item co-occurrence, trending) by learned weights, trained with BPR.

``score(u, v) = w_0(n_u) q_uᵀ (e_v + δ_v) + Σ_s w_s(n_u) f_s(u, v) + b_v`` with ``q_u = ĥ_u W``
and ``W = I + U Vᵀ`` (low rank, zero at start, so an untrained head ranks by content similarity).
Each weight ``w_s(n) = a_s + c_s log(1 + n)`` depends on the user's history length ``n``, so the
head learns how far to trust each signal for new and for long-standing users. ``δ_v`` (a per-item
offset) and ``b_v`` (a per-item bias) are updated sparsely: a step touches only the rows of the
items in its batch, so its cost does not grow with the catalog.

With ``image_dim`` the content vector ``e_v`` is the text embedding fused with the item's image
embedding by a learned gate and projection (``learner/fusion.py``), trained in the same step;
items without an image keep the text embedding as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from learner.fusion import FUSION_PARAMS, ImageFusion, ItemImages

__all__ = ["BilinearHead", "HeadConfig", "bpr_loss"]


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Bayesian personalised ranking loss, summed: ``-Σ log σ(pos - neg)``.

    ``pos`` has shape ``(B,)`` and ``neg`` ``(B, n)``; each positive is compared with its row's
    negatives.

    Examples
    --------
    >>> round(float(bpr_loss(torch.tensor([0.0]), torch.tensor([[0.0]]))), 4)
    0.6931
    """
    return -torch.nn.functional.logsigmoid(pos.unsqueeze(-1) - neg).sum()


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters of the head."""

    rank: int = 32
    lr: float = 0.003  # Adam, for U and V
    item_lr: float = 0.05  # SGD, for δ and b
    l2: float = 1e-4
    negatives: int = 8
    # Share of negatives drawn in proportion to popularity^0.75 rather than uniformly: popular
    # items are the hard negatives that decide a top-10, uniform ones are mostly easy.
    popular_negatives: float = 0.5
    seed: int = 0


class BilinearHead:
    """Parameters and the BPR step of the bilinear head.

    Examples
    --------
    >>> head = BilinearHead(dim=2, capacity=3)
    >>> e = torch.eye(3)[:, :2]
    >>> h = torch.tensor([[1.0, 0.0]])
    >>> head.scores(h, e, 3)
    tensor([[1., 0., 0.]])
    """

    def __init__(
        self,
        dim: int,
        config: HeadConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        capacity: int = 1024,
        signal_init: tuple[float, ...] = (),
        bilinear_init: float = 1.0,
        image_dim: int = 0,
    ) -> None:
        self.config = config or HeadConfig()
        self.n_signals = len(signal_init)
        self.dim = dim
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        scale = 0.01
        self.U = torch.nn.Parameter(
            (torch.randn(dim, self.config.rank, generator=self.generator) * scale).to(self.device)
        )
        self.V = torch.nn.Parameter(torch.zeros(dim, self.config.rank, device=self.device))
        # Mixing weights: row 0 the bilinear score, then one row per signal; columns are the
        # constant and the slope in log(1 + history length).
        init = torch.zeros((1 + self.n_signals, 2))
        init[:, 0] = torch.tensor((bilinear_init, *signal_init))
        self.mix = torch.nn.Parameter(init.to(self.device))
        # The image side (image_dim 0: none); its parameters train in the same Adam step.
        self.fusion: ImageFusion | None = None
        params = [self.U, self.V, self.mix]
        if image_dim:
            self.fusion = ImageFusion(dim, image_dim, device=self.device, seed=self.config.seed + 1)
            params.extend(self.fusion.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr)
        self.delta = torch.zeros((capacity, dim), device=self.device)
        self.bias = torch.zeros(capacity, device=self.device)
        self.steps = 0

    def shared_state(self) -> dict[str, np.ndarray]:
        """The parameters workers share and average (``U``, ``V``, the mixing weights, and with
        images the fusion's ``image_proj`` and ``image_gate``), as float32 arrays. The per-item
        offsets and biases stay with each worker: they are catalog-sized and keyed by rows that
        are local to a process. A head with images and one without have different names, so
        neither averages the other's parameters in (``consumer/model_sync.py`` checks names and
        shapes).

        Examples
        --------
        >>> a, b = BilinearHead(dim=2, capacity=1), BilinearHead(dim=2, capacity=1)
        >>> b.load_shared([a.shared_state(), a.shared_state()])
        >>> bool(torch.equal(a.U, b.U))
        True
        """
        state = {
            name: getattr(self, name).detach().cpu().numpy().astype(np.float32, copy=True)
            for name in ("U", "V", "mix")
        }
        if self.fusion is not None:
            state.update(self.fusion.shared_state())
        return state

    def load_shared(self, states: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Set the shared parameters to the mean of ``states`` (each like
        :meth:`shared_state`); the optimiser's moments are kept."""
        names: tuple[str, ...] = ("U", "V", "mix")
        if self.fusion is not None:
            names += FUSION_PARAMS
        for st in states:
            if set(st) != set(names):
                raise ValueError(f"shared parameters {sorted(st)} are not {sorted(names)}")
        with torch.no_grad():
            for name in names:
                mean = np.mean([np.asarray(st[name], dtype=np.float32) for st in states], axis=0)
                param = self._param(name)
                if tuple(mean.shape) != tuple(param.shape):
                    raise ValueError(f"{name}: shape {mean.shape} is not {tuple(param.shape)}")
                param.copy_(torch.from_numpy(mean).to(param.device))

    def _param(self, name: str) -> torch.nn.Parameter:
        if name in FUSION_PARAMS:
            assert self.fusion is not None
            return self.fusion.param(name)
        param: torch.nn.Parameter = getattr(self, name)
        return param

    def content(
        self, embeddings: Tensor, rows: Tensor | slice, images: ItemImages | None = None
    ) -> Tensor:
        """The content vectors ``e_v`` of ``rows``: the text embeddings, fused with the image
        embeddings when the head has an image side and ``images`` are given."""
        x = embeddings[rows]
        if self.fusion is None or images is None:
            return x
        return self.fusion(x, images.vectors[rows], images.present[rows])

    def ensure_capacity(self, n: int) -> None:
        cap = self.delta.shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        delta = torch.zeros((new_cap, self.dim), device=self.device)
        delta[:cap] = self.delta
        bias = torch.zeros(new_cap, device=self.device)
        bias[:cap] = self.bias
        self.delta, self.bias = delta, bias

    def item_vectors(
        self, embeddings: Tensor, num_rows: int, images: ItemImages | None = None
    ) -> Tensor:
        """``e_v + δ_v`` for rows ``0..num_rows-1``."""
        self.ensure_capacity(num_rows)
        return self.content(embeddings, slice(0, num_rows), images) + self.delta[:num_rows]

    def vectors_at(
        self, embeddings: Tensor, rows: Tensor, images: ItemImages | None = None
    ) -> Tensor:
        """``e_v + δ_v`` for the item rows ``rows``."""
        return self.content(embeddings, rows, images) + self.delta[rows]

    def query(self, user_vectors: Tensor) -> Tensor:
        """``ĥ_u W`` for a batch of (un-normalised) user vectors."""
        h = torch.nn.functional.normalize(user_vectors, dim=-1)
        return h + (h @ self.U) @ self.V.T

    def mixing(self, history_len: Tensor) -> Tensor:
        """Per-user weights of (bilinear, signals...): shape ``(users, 1 + n_signals)``."""
        h = torch.log1p(history_len.to(self.device, torch.float32)).unsqueeze(-1)
        return self.mix[:, 0] + h * self.mix[:, 1]

    def scores(
        self,
        user_vectors: Tensor,
        embeddings: Tensor,
        num_rows: int,
        signals: Sequence[Tensor] = (),
        history_len: Tensor | None = None,
        images: ItemImages | None = None,
    ) -> Tensor:
        """Scores of every item row for each user: shape ``(users, num_rows)``.

        ``signals`` are ``n_signals`` tensors broadcastable to ``(users, num_rows)``.
        """
        with torch.no_grad():
            q = self.query(user_vectors)
            bil = q @ self.item_vectors(embeddings, num_rows, images).T
            if history_len is None:
                history_len = torch.zeros(user_vectors.shape[0], device=self.device)
            w = self.mixing(history_len)
            out = w[:, :1] * bil + self.bias[:num_rows]
            for s, signal in enumerate(signals):
                out = out + w[:, 1 + s : 2 + s] * signal
            return out

    def _pair_scores(
        self,
        user_vectors: Tensor,
        pos_rows: Tensor,
        neg_rows: Tensor,
        embeddings: Tensor,
        d_pos: Tensor,
        d_neg: Tensor,
        b_pos: Tensor,
        b_neg: Tensor,
        pos_signals: Tensor | None,
        neg_signals: Tensor | None,
        history_len: Tensor | None,
        images: ItemImages | None = None,
    ) -> tuple[Tensor, Tensor]:
        q = self.query(user_vectors)
        if history_len is None:
            history_len = torch.zeros(user_vectors.shape[0], device=self.device)
        w = self.mixing(history_len)
        e_pos = self.content(embeddings, pos_rows, images)
        e_neg = self.content(embeddings, neg_rows, images)
        s_pos = w[:, 0] * (q * (e_pos + d_pos)).sum(-1) + b_pos
        s_neg = w[:, :1] * torch.einsum("bd,bnd->bn", q, e_neg + d_neg) + b_neg
        if self.n_signals:
            assert pos_signals is not None and neg_signals is not None
            s_pos = s_pos + (w[:, 1:] * pos_signals).sum(-1)
            s_neg = s_neg + (w[:, None, 1:] * neg_signals).sum(-1)
        return s_pos, s_neg

    def loss(
        self,
        user_vectors: Tensor,
        pos_rows: Tensor,
        neg_rows: Tensor,
        embeddings: Tensor,
        pos_signals: Tensor | None = None,
        neg_signals: Tensor | None = None,
        history_len: Tensor | None = None,
        images: ItemImages | None = None,
    ) -> Tensor:
        """Mean BPR loss of a batch, without updating anything (for tests and monitoring)."""
        with torch.no_grad():
            s_pos, s_neg = self._pair_scores(
                user_vectors,
                pos_rows,
                neg_rows,
                embeddings,
                self.delta[pos_rows],
                self.delta[neg_rows],
                self.bias[pos_rows],
                self.bias[neg_rows],
                pos_signals,
                neg_signals,
                history_len,
                images,
            )
            return bpr_loss(s_pos, s_neg) / max(1, s_neg.numel())

    def sample_negatives(
        self,
        active: Tensor,
        batch: int,
        popularity: Tensor | None = None,
        count: int | None = None,
    ) -> Tensor:
        """``(batch, count)`` live item rows: some uniform, some by ``popularity^0.75``."""
        live = torch.nonzero(active, as_tuple=False).squeeze(-1).cpu()
        n = self.config.negatives if count is None else count
        n_pop = 0 if popularity is None else round(n * self.config.popular_negatives)
        pick = torch.randint(0, live.numel(), (batch, n - n_pop), generator=self.generator)
        rows = live[pick]
        if n_pop:
            assert popularity is not None
            weights = popularity.cpu()[live].clamp(min=0).pow(0.75) + 1e-6
            extra = torch.multinomial(
                weights, batch * n_pop, replacement=True, generator=self.generator
            )
            rows = torch.cat([rows, live[extra].reshape(batch, n_pop)], dim=1)
        return rows.to(self.device)

    def step(
        self,
        user_vectors: Tensor,
        pos_rows: Tensor,
        neg_rows: Tensor,
        embeddings: Tensor,
        pos_signals: Tensor | None = None,
        neg_signals: Tensor | None = None,
        history_len: Tensor | None = None,
        images: ItemImages | None = None,
    ) -> float:
        """One optimiser step of BPR on a batch; returns the mean loss before the step.

        ``user_vectors`` is the state of each event's user *before* the event; rows whose user
        has no history yet (a zero vector) carry no signal and should be left out by the caller.
        ``pos_signals`` ``(B, S)`` and ``neg_signals`` ``(B, negatives, S)`` are the other
        signals' values for the positive and negative items, also from before the event.
        """
        if pos_rows.numel() == 0:
            return 0.0
        self.ensure_capacity(int(max(pos_rows.max(), neg_rows.max())) + 1)
        d_pos = self.delta[pos_rows].clone().requires_grad_(True)
        d_neg = self.delta[neg_rows].clone().requires_grad_(True)
        b_pos = self.bias[pos_rows].clone().requires_grad_(True)
        b_neg = self.bias[neg_rows].clone().requires_grad_(True)
        s_pos, s_neg = self._pair_scores(
            user_vectors.detach(),
            pos_rows,
            neg_rows,
            embeddings,
            d_pos,
            d_neg,
            b_pos,
            b_neg,
            pos_signals,
            neg_signals,
            history_len,
            images,
        )
        n_pairs = s_neg.numel()
        data_loss = bpr_loss(s_pos, s_neg)
        reg = self.config.l2 * (
            d_pos.pow(2).sum() + d_neg.pow(2).sum() + b_pos.pow(2).sum() + b_neg.pow(2).sum()
        )
        self.optimizer.zero_grad(set_to_none=True)
        ((data_loss + reg) / n_pairs).backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        # Sparse SGD on the touched item rows, with per-pair (not per-batch) gradients.
        lr = self.config.item_lr * n_pairs / self.config.negatives
        with torch.no_grad():
            assert d_pos.grad is not None and d_neg.grad is not None
            assert b_pos.grad is not None and b_neg.grad is not None
            self.delta.index_add_(0, pos_rows, -lr * d_pos.grad)
            self.delta.index_add_(0, neg_rows.reshape(-1), -lr * d_neg.grad.reshape(-1, self.dim))
            self.bias.index_add_(0, pos_rows, -lr * b_pos.grad)
            self.bias.index_add_(0, neg_rows.reshape(-1), -lr * b_neg.grad.reshape(-1))
        self.steps += 1
        return float(data_loss.detach()) / n_pairs
