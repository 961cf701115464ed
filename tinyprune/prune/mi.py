"""The ``mi`` criterion: channels ranked by the information they carry about the labels.

Score of channel c of a layer (the relevance-with-redundancy view of the essay "Informational
Theoretical Neural Network Pruning" in shared/seeds, with Soltani et al.'s estimator):

    score_c = I(T_c; Y) * exp(-beta * I_G(T_c; T_c*))

* ``I(T_c; Y)``: relevance, the Kolchinsky-Tracey KDE bound on the MI between the channel's
  spatially averaged feature map and the label (``tinyprune.information.channel_mi``), nats;
* ``T_c*``: the most correlated channel of the same layer that is *more* relevant than c;
  ``I_G = -0.5 ln(1 - rho^2)`` is the MI of the two under a Gaussian model, so
  ``exp(-2 I_G) = 1 - rho^2`` is the fraction of c's variance the better channel does not
  already explain. A channel that repeats a more informative one scores near zero, so of a
  set of redundant channels only the most relevant is kept.

Scores are in nats of the same label variable in every layer, so one global ranking decides
how much each layer loses; a floor keeps at least 20 % of every layer. Scores are re-measured
(one forward pass over the analysis samples) whenever another 10 % of the channels present at
the last measurement have gone, since removing channels changes what the others carry
downstream; in between, each remaining channel keeps its last measured score.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from tinyprune.errors import DataError
from tinyprune.prune.groups import PRUNABLE as _PRUNABLE
from tinyprune.prune.groups import group_mean

BETA = 1.0  # weight of the redundancy term
# the KDE upper bound by binned FFT kernel sums: equal to "kde" within 0.01 nats, O(N) per channel
ESTIMATOR = "kde-binned"


def redundancy_discount(acts: torch.Tensor, relevance: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """exp(-beta * I_G(c; best more-relevant channel)) for each channel of ``acts`` [N, C]."""
    x = acts - acts.mean(0)
    x = x / x.norm(dim=0).clamp_min(1e-12)
    rho2 = (x.T @ x).pow(2).clamp(max=1 - 1e-6)
    more_relevant = relevance[None, :] > relevance[:, None]  # [c, c']: c' ranks above c
    rho2 = torch.where(more_relevant, rho2, torch.zeros_like(rho2))
    mi_gauss = -0.5 * torch.log1p(-rho2.max(dim=1).values)
    return torch.exp(-beta * mi_gauss)


def layer_scores(acts: torch.Tensor, y: np.ndarray, method: str = ESTIMATOR, beta: float = BETA) -> dict:
    from tinyprune.information import channel_mi

    relevance = torch.as_tensor(channel_mi(acts, y, method=method), dtype=torch.float64)
    discount = redundancy_discount(acts.double(), relevance, beta)
    score = relevance * discount
    # Per-channel MI grows with depth (late features are class-specific, early ones generic but
    # needed by everything after them), so raw nats would starve the first layers. The global
    # ranking compares each channel with the best channel of its own layer instead.
    return {"relevance": relevance, "score": score / score.max().clamp_min(1e-12)}


def check_labels(y: np.ndarray) -> None:
    """MI with the label needs at least two classes, each with two samples or more."""
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError(f"the MI analysis needs at least 2 classes in its {len(y)} samples, found {len(present)}; "
                        "pass more varied data or use --criterion l1 or flow (no labels needed)")
    if present.min() < 2:
        rare = int(np.flatnonzero(counts == present.min())[0])
        raise DataError(f"the MI analysis needs at least 2 samples of every class; class {rare} has "
                        f"{int(present.min())} of {len(y)}: pass more data")


class MIImportance:
    """torch-pruning importance: per-channel MI scores of the group's conv/linear outputs."""

    REMEASURE = 0.10  # re-measure after this fraction of the channels has gone

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray, method: str = ESTIMATOR, beta: float = BETA,
                 cache_dir=None):
        check_labels(y)
        self.model, self.x, self.y = model, x, y
        self.method, self.beta, self.cache_dir = method, beta, cache_dir
        self.kept: dict[str, list[int]] | None = None  # channel identities, kept up to date by the pruner
        self._measured: dict[str, tuple[list[int], dict]] = {}  # layer -> (ids then, scores then)
        self._channels_then = 0

    def _channels(self) -> int:
        return sum(m.weight.shape[0] for m in self.model.modules() if isinstance(m, _PRUNABLE))

    def _refresh(self) -> None:
        now = self._channels()
        if self._measured and (self.kept is not None and now > (1 - self.REMEASURE) * self._channels_then):
            return
        scores = measure_scores(self.model, self.x, self.y, self.method, self.beta, self.cache_dir)
        self._measured = {
            name: (list(self.kept[name]) if self.kept and name in self.kept else list(range(len(s["score"]))), s)
            for name, s in scores.items()
        }
        self._channels_then = now

    def _current(self, name: str) -> dict | None:
        """The layer's last measured scores, for the channels it has now."""
        if name not in self._measured:
            return None
        ids_then, scores = self._measured[name]
        ids_now = self.kept.get(name, ids_then) if self.kept is not None else ids_then
        pos = {c: i for i, c in enumerate(ids_then)}
        idx = torch.tensor([pos[c] for c in ids_now])
        return {k: v[idx] for k, v in scores.items()}

    def __call__(self, group) -> torch.Tensor | None:
        self._refresh()

        def scores_of(name):
            current = self._current(name)
            return None if current is None else current["score"]

        return group_mean(self.model, group, scores_of)


def measure_scores(model: nn.Module, x: np.ndarray, y: np.ndarray, method: str = ESTIMATOR, beta: float = BETA,
                   cache_dir=None) -> dict[str, dict[str, torch.Tensor]]:
    """Per prunable layer: relevance I(T_c;Y) and redundancy-discounted score of every channel,
    from one forward pass over ``x``; stored in ``cache_dir`` (tinyprune.information.cache)."""
    from tinyprune.information import capture_activations
    from tinyprune.information.cache import cached

    def compute():
        acts = capture_activations(model, x, summary="mean")
        out = {"names": np.array(list(acts), dtype=str)}
        for i, a in enumerate(acts.values()):
            s = layer_scores(a, y, method, beta)
            out[f"relevance{i}"], out[f"score{i}"] = s["relevance"].numpy(), s["score"].numpy()
        return out

    stored = cached("mi-scores", model, {"x": x, "y": y}, {"method": method, "beta": beta}, compute, cache_dir)
    return {str(name): {"relevance": torch.from_numpy(stored[f"relevance{i}"]),
                        "score": torch.from_numpy(stored[f"score{i}"])}
            for i, name in enumerate(stored["names"])}


def model_channel_mi(model: nn.Module, x: np.ndarray, y: np.ndarray, method: str = ESTIMATOR,
                     cache_dir=None) -> dict[str, dict]:
    """:func:`measure_scores` as numpy arrays."""
    return {name: {k: v.numpy() for k, v in s.items()}
            for name, s in measure_scores(model, x, y, method, cache_dir=cache_dir).items()}
