"""Activation statistics of a pruning step, declared by whoever needs them and measured in one
forward pass (in the spirit of NNCF's statistic points).

A request names a layer, where its activations are read (the layer's input or output), which
samples of ``x`` count, a cap on the rows (sample x position vectors) per layer, whether the
fourth moment Ledoit-Wolf needs is kept, and the precision of the products. :func:`collect`
runs the model once over the union of the requested samples and feeds every request from the
same hooks (``tinyprune.information.capture.run_hooks``).

Moments are streamed (:class:`Moments`): the sums of x, x x^T and, when asked, ||x||^2 x and
||x||^4 are updated batch by batch, so memory is C^2 per layer whatever the number of rows, and
a layer never holds its rows. Products may be float32 (compensation: its fit is regularised by
the shrinkage and a ridge, and the rows are shifted by the first batch's mean first, which keeps
the cancellation in ``E[x x^T] - m m^T`` small); the sums are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tinyprune.information.capture import run_hooks


def rows_of(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A layer's activation as [vectors, channels]: a Linear's features are its last axis, a
    conv's channels axis 1 (every sample and position one vector)."""
    if isinstance(module, nn.Linear):
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


class Moments:
    """Streaming moments of row vectors [n, C].

    ``shift``: rows are taken relative to the first batch's mean (float rounding only; without
    it the sums are those of the raw rows, as flow has always summed them)."""

    def __init__(self, dtype: torch.dtype = torch.float64, fourth: bool = False, shift: bool = True):
        self.dtype, self.fourth, self.shift = dtype, fourth, shift
        self.n = 0
        self.origin = None
        self.s1 = self.s2 = None
        self.q2 = 0.0  # sum ||x||^4 (shifted rows)
        self.q1 = None  # sum ||x||^2 x

    def add(self, rows: torch.Tensor) -> None:
        d = rows.to(self.dtype)
        if self.origin is None:
            self.origin = d.mean(0) if self.shift else torch.zeros(d.shape[1], dtype=self.dtype)
            self.s1 = torch.zeros(d.shape[1], dtype=torch.float64)
            self.s2 = torch.zeros(d.shape[1], d.shape[1], dtype=torch.float64)
            self.q1 = torch.zeros(d.shape[1], dtype=torch.float64)
        if self.shift:
            d = d - self.origin
        self.n += d.shape[0]
        self.s1 = self.s1 + d.sum(0).double()
        self.s2 = self.s2 + (d.T @ d).double()
        if self.fourth:
            q = d.double().pow(2).sum(1)
            self.q2 += float(q.pow(2).sum())
            self.q1 += (q[:, None] * d.double()).sum(0)

    def mean(self) -> torch.Tensor:
        return self.s1 / self.n + self.origin.double()

    def covariance(self) -> torch.Tensor:
        """Maximum-likelihood covariance (divided by n)."""
        m = self.s1 / self.n
        return self.s2 / self.n - torch.outer(m, m)

    def ledoit_wolf(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, Ledoit-Wolf shrunk covariance), float64: scikit-learn's ``LedoitWolf().fit(rows)``
        from the streamed sums, equal to it up to float rounding (checked in the tests)."""
        if not self.fourth:
            raise ValueError("Ledoit-Wolf needs the fourth moment: Moments(fourth=True)")
        n, p = self.n, self.s2.shape[0]
        emp = self.covariance()
        if p == 1:
            return self.mean(), emp
        m = self.s1 / n
        c = float(m @ m)
        # sum over rows of ||x - m||^4, expanded in the streamed sums
        quartic = (self.q2 - 4 * float(m @ self.q1) + 2 * c * float(self.s2.trace()) + 4 * float(m @ self.s2 @ m)
                   - 4 * c * float(m @ self.s1) + n * c * c)
        trace = emp.diagonal()
        mu = float(trace.sum()) / p
        delta_ = float(emp.pow(2).sum())
        beta = (quartic / n - delta_) / (p * n)
        delta = (delta_ - 2 * mu * float(trace.sum()) + p * mu * mu) / p
        beta = min(beta, delta)
        shrinkage = 0.0 if beta == 0 else beta / delta
        shrunk = (1 - shrinkage) * emp
        shrunk.diagonal().add_(shrinkage * mu)
        return self.mean(), shrunk


@dataclass(frozen=True, eq=False)
class Request:
    """One statistic of one layer: the moments of its input (or output) vectors."""

    layer: nn.Module
    samples: int | None = None  # the first ``samples`` of x (None: all)
    cap: int | None = None  # at most this many vectors per layer, drawn at random (None: all)
    fourth: bool = False
    dtype: torch.dtype = torch.float64
    point: str = "input"  # "input" or "output"
    shift: bool = True
    seed: int = 0


class _Feed:
    """Feeds one request from its layer's hook: the vectors of the wanted samples, capped."""

    def __init__(self, request: Request, total_samples: int):
        self.request = request
        self.moments = Moments(request.dtype, request.fourth, request.shift)
        self.samples = total_samples if request.samples is None else min(request.samples, total_samples)
        self.seen = 0  # samples passed
        self.offset = 0  # vectors passed
        self.chosen: torch.Tensor | None = None  # sorted vector indices kept under the cap
        self.out_positions = 1

    def __call__(self, t: torch.Tensor) -> None:
        # without a sample limit every call counts (a module called twice per forward, as flow summed it)
        take = t.shape[0] if self.request.samples is None else min(t.shape[0], self.samples - self.seen)
        self.seen += t.shape[0]
        if take <= 0:
            return
        rows = rows_of(t[:take], self.request.layer)
        cap = self.request.cap
        if cap is not None and self.chosen is None:
            per_sample = rows.shape[0] // take
            total = per_sample * self.samples
            if total > cap:
                gen = torch.Generator().manual_seed(self.request.seed)
                self.chosen = torch.randperm(total, generator=gen)[:cap].sort().values
        if self.chosen is not None:
            lo = int(torch.searchsorted(self.chosen, self.offset))
            hi = int(torch.searchsorted(self.chosen, self.offset + rows.shape[0]))
            local = self.chosen[lo:hi] - self.offset
            self.offset += rows.shape[0]
            rows = rows[local]
        if rows.shape[0]:
            self.moments.add(rows)


def collect(model: nn.Module, x: np.ndarray, requests: list[Request], batch_size: int = 128) -> dict:
    """Run ``x`` through ``model`` once and return {request: Moments} for every request whose
    layer ran, and {layer: output positions per sample} under the key ``"positions"``."""
    wanted = max((len(x) if r.samples is None else min(r.samples, len(x)) for r in requests), default=0)
    feeds: dict[nn.Module, list[_Feed]] = {}
    for r in requests:
        feeds.setdefault(r.layer, []).append(_Feed(r, len(x)))
    positions: dict[nn.Module, int] = {}

    def hook(module, inputs, out):
        positions[module] = 1 if isinstance(module, nn.Linear) else out[0].numel() // out.shape[1]
        for feed in feeds[module]:
            feed((out if feed.request.point == "output" else inputs[0]).detach())

    batches = (torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])) for s in range(0, wanted, batch_size))
    run_hooks(model, batches, [(m, hook) for m in feeds])
    result: dict = {f.request: f.moments for fs in feeds.values() for f in fs if f.moments.n}
    result["positions"] = positions
    return result
