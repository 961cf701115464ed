"""The information plane: I(X;T) against I(T;Y) per layer, recorded epoch by epoch (Tewary 2023).

Shwartz-Ziv & Tishby (2017) plot, for every hidden representation T of a network, the MI with
the input X and with the label Y while it trains; Tewary (2023) does it before and after pruning.
:class:`PlaneRecorder` measures both on a fixed sample (x, y) each time :meth:`record` is
called; :func:`record_during_finetune` trains one epoch at a time and records after each (epoch
0: before training); :func:`plot_plane` draws one curve per layer, coloured by epoch. All in
nats, on the empirical distribution of the N samples (X uniform over them).

Two estimators (``methods``):

* ``"binning"`` (Shwartz-Ziv & Tishby 2017; Tewary 2023): every coordinate of T cut into ``bins``
  equal-width bins over one range per layer and record (``binning_range="layer"``: the
  layer's min..max on the sample; ``"tanh"``: squash with tanh and bin [-1, 1], Tewary's (2023)
  mapping for unbounded activations; or a fixed ``(low, high)``); each sample's bin vector is
  one symbol. The input is binned the same way over its own range. Then
  ``I(X;T) = H(X_b) + H(T_b) - H(X_b, T_b)`` and ``I(T;Y) = H(T_b) + H(Y) - H(T_b, Y)``
  (plug-in). T is a deterministic function of X, so when the binned inputs are all distinct
  (the usual case) ``I(X;T) = H(T_b)``, Shwartz-Ziv & Tishby's formula. Bounds that hold
  exactly: ``I(X;T) <= H(X_b) <= ln N`` and ``I(T;Y) <= H(Y)``.
* ``"kde"`` (Saxe et al. 2018): T plus isotropic Gaussian noise of variance ``noise_var`` (in
  the activations' own units, no standardization; default 0.1). ``noise_var="median"`` sets it
  per layer and record to the median heuristic (half the median squared distance between
  two samples' T, :func:`tinyprune.information._common.median_width`), a scale-free variant:
  a fixed variance saturates at ln N as soon as the activations spread far beyond it. ``I(T;Y)`` is the Kolchinsky-Tracey
  ``"upper"`` estimate (:func:`tinyprune.information.kde_mi`); ``I(X;T) = H(T + noise) -
  H(noise)`` with the KL pairwise bound on the mixture entropy
  (:func:`tinyprune.information.kde_entropy`), which reduces to ``-(1/N) sum_i ln[(1/N) sum_j
  exp(-|t_i - t_j|^2 / (2 noise_var))]``. Bounds: ``I(X;T) <= ln N`` and ``I(T;Y) <= H(Y)``
  (both exact for these formulas: each inner sum holds its own term 1, and the class-k part).

What T is. By default (:func:`default_layers`) the representation after each conv/linear
layer's activation when the model applies it as a module right after the layer (or after its
BN): ``Conv -> [BN] -> ReLU`` records the ReLU output, as the papers do; otherwise the
conv/linear output itself; the classifier's output (logits) is the last layer. ``layers``
names any modules instead. ``summary="flat"`` (default) takes the whole map, ``"mean"`` the
per-channel spatial mean.

Caveat, to read the plots right: with N samples no estimate exceeds ln N, and a
representation of more than a few dimensions separates all N samples into different bins (or
beyond the noise scale), so binning gives ``I(X;T) = ln N`` and ``I(T;Y) = H(Y)`` for most
wide layers whatever the training does. The movement is in narrow layers, coarse bins, or
KDE with a noise scale comparable to the spread of the activations. Seed 004's own report
mentions this sensitivity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from tinyprune.errors import ConfigError
from tinyprune.information._common import label_entropy, shannon_from_counts, split_y
from tinyprune.information.binning import discretize, symbols
from tinyprune.information.capture import capture_activations

METHODS = ("binning", "kde")
SCHEMA_VERSION = 1
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                nn.Hardtanh, nn.PReLU, nn.Softplus)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def default_layers(model: nn.Module) -> list[str]:
    """The representations to record: after each conv/linear's activation module where the
    model has one right after it (or after its BN), else the conv/linear output.

    Found with a symbolic trace; an activation module that is called more than once (one
    ``self.relu`` shared by every layer) cannot be told apart by a hook, so its layer falls
    back to the conv/linear output, and so does everything when the model cannot be traced.
    """
    layers = [n for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    if not layers:
        raise ConfigError("the model has no Conv1d/Conv2d/Linear layer; name the layers to record")
    try:
        import torch.fx as fx

        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception:
        return layers
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def single_module_user(node, kinds):
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op == "call_module" and isinstance(mods.get(user.target), kinds) and calls[user.target] == 1:
            return user
        return None

    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _LAYERS) or calls[node.target] != 1:
            continue
        nxt = single_module_user(node, _BN) or node
        act = single_module_user(nxt, _ACTIVATIONS)
        out.append(act.target if act is not None else node.target)
    return out or layers


def _codes_entropy(codes: torch.Tensor) -> float:
    # unique, not bincount: joint codes reach N^2 and would allocate that many counters
    return float(shannon_from_counts(torch.unique(codes, return_counts=True)[1].to(torch.float64)))


def _joint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * (int(b.max()) + 1) + b


def _bin_range(t: torch.Tensor, binning_range) -> tuple[torch.Tensor, tuple[float, float]]:
    if binning_range == "tanh":
        return torch.tanh(t), (-1.0, 1.0)
    if binning_range == "layer":
        lo, hi = float(t.min()), float(t.max())
        return t, (lo, hi if hi > lo else lo + 1.0)
    lo, hi = (float(v) for v in binning_range)
    return t, (lo, hi)


class PlaneRecorder:
    """Records I(X;T) and I(T;Y) of the chosen layers of ``model`` on (x, y) at each :meth:`record`.

    ``x``: the fixed sample (numpy/torch, model layout), ``y``: its integer labels. ``methods``:
    ``"binning"``, ``"kde"`` or a sequence of both. ``bins``: bins per coordinate (binning);
    ``noise_var``: the KDE noise variance. The recorder holds a reference to ``model``, so a
    model trained in place between calls is measured as it is at each call.
    """

    def __init__(self, model: nn.Module, x, y, layers: Iterable[str] | None = None,
                 method: str | Sequence[str] = "binning", bins: int = 30, noise_var: float = 0.1,
                 binning_range="layer", summary: str = "flat", batch_size: int = 256):
        methods = (method,) if isinstance(method, str) else tuple(method)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ConfigError(f"unknown information-plane method {bad or methods}; choose from {', '.join(METHODS)}")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
            raise ConfigError(f"bins must be an integer >= 2, got {bins!r}")
        if noise_var != "median" and not (isinstance(noise_var, (int, float)) and not isinstance(noise_var, bool)
                                          and noise_var > 0 and math.isfinite(noise_var)):
            raise ConfigError(f"noise_var must be a positive number or 'median', got {noise_var!r}")
        if not (binning_range in ("layer", "tanh") or (isinstance(binning_range, (tuple, list))
                                                       and len(binning_range) == 2)):
            raise ConfigError(f"binning_range must be 'layer', 'tanh' or (low, high), got {binning_range!r}")
        if summary not in ("flat", "mean"):
            raise ConfigError(f"summary must be 'flat' or 'mean', got {summary!r}")
        self.model = model
        self.x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        labels, _ = split_y(np.asarray(y), len(self.x), discrete=True)
        self.y = labels
        self.y_raw = np.asarray(y)
        self.layers = list(layers) if layers is not None else default_layers(model)
        self.methods = methods
        self.bins = int(bins)
        self.noise_var = noise_var if noise_var == "median" else float(noise_var)
        self.noise_used: dict[str, list[float]] = {name: [] for name in self.layers}
        self.binning_range = binning_range
        self.summary = summary
        self.batch_size = batch_size
        self.n = len(self.x)
        self.h_y = label_entropy(self.y)
        xb, x_range = _bin_range(self.x.reshape(self.n, -1).double(), "layer")
        self.x_codes = symbols(discretize(xb, self.bins, x_range))
        self.h_x_binned = _codes_entropy(self.x_codes)
        self.dims: dict[str, int] = {}
        self.epochs: list[int] = []
        self.accuracy: list[float] = []
        self.values: dict[str, dict[str, dict[str, list[float]]]] = {
            m: {"ixt": {name: [] for name in self.layers}, "ity": {name: [] for name in self.layers}}
            for m in methods
        }

    # -- estimators -------------------------------------------------------------------------
    def _binning(self, t: torch.Tensor) -> tuple[float, float]:
        t, value_range = _bin_range(t, self.binning_range)
        ct = symbols(discretize(t, self.bins, value_range))
        h_t = _codes_entropy(ct)
        ixt = self.h_x_binned + h_t - _codes_entropy(_joint(ct, self.x_codes))
        ity = h_t + self.h_y - _codes_entropy(_joint(ct, self.y))
        return ixt, ity

    def _kde(self, t: torch.Tensor, name: str) -> tuple[float, float]:
        from tinyprune.information._common import median_width
        from tinyprune.information.kde import kde_entropy, kde_mi

        s = median_width(t) if self.noise_var == "median" else math.sqrt(self.noise_var)
        self.noise_used[name].append(s * s)
        d = t.shape[1]
        h_noise = 0.5 * d * math.log(2.0 * math.pi * math.e * s * s)
        ixt = kde_entropy(t, bound="upper", sigma=s, standardize=False) - h_noise
        ity = kde_mi(t, self.y, bound="upper", sigma=s, standardize=False, discrete_y=True)
        return ixt, ity

    # -- recording --------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, epoch: int) -> dict:
        """Measure every layer now; returns ``{layer: {method: (I(X;T), I(T;Y))}}``."""
        acts = capture_activations(self.model, self.x, layers=self.layers, batch_size=self.batch_size,
                                   summary=self.summary)
        was = self.model.training
        self.model.eval()
        try:
            pred = torch.cat([self.model(self.x[i:i + self.batch_size]).argmax(1)
                              for i in range(0, self.n, self.batch_size)])
        finally:
            self.model.train(was)
        self.epochs.append(int(epoch))
        self.accuracy.append(float((pred.numpy() == self.y_raw).mean()))
        out = {}
        for name in self.layers:
            t = acts[name].reshape(self.n, -1).double()
            self.dims[name] = int(t.shape[1])
            out[name] = {}
            for m in self.methods:
                ixt, ity = self._binning(t) if m == "binning" else self._kde(t, name)
                self.values[m]["ixt"][name].append(float(ixt))
                self.values[m]["ity"][name].append(float(ity))
                out[name][m] = (float(ixt), float(ity))
        return out

    def to_dict(self) -> dict:
        """The content of plane.json (see the module doc for what each number is)."""
        methods = {}
        for m in self.methods:
            opts = ({"bins": self.bins, "binning_range": self.binning_range if isinstance(self.binning_range, str)
                     else list(self.binning_range)} if m == "binning"
                    else {"noise_var": self.noise_var,
                          "noise_var_used": {k: list(v) for k, v in self.noise_used.items()}})
            methods[m] = {**opts, "ixt": {k: list(v) for k, v in self.values[m]["ixt"].items()},
                          "ity": {k: list(v) for k, v in self.values[m]["ity"].items()}}
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "information_plane",
            "units": "nats",
            "samples": self.n,
            "label_entropy": self.h_y,  # H(Y): bound on every I(T;Y)
            "ln_samples": math.log(self.n),  # ln N: bound on every I(X;T)
            "input_entropy_binned": self.h_x_binned,  # H(X_b): bound on the binning I(X;T)
            "summary": self.summary,
            "layers": [{"name": n, "dim": self.dims.get(n)} for n in self.layers],
            "epochs": list(self.epochs),
            "accuracy": list(self.accuracy),  # on the recorded sample
            "methods": methods,
        }


def record_during_finetune(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_sample, y_sample,
                           epochs: int, *, methods: str | Sequence[str] = ("binning", "kde"), bins: int = 30,
                           noise_var: float | str = 0.1, layers: Iterable[str] | None = None, lr: float = 1e-3,
                           batch_size: int = 64, seed: int = 0, progress: Callable | None = None,
                           label: str = "fine-tune", **recorder_options) -> tuple[nn.Module, dict]:
    """Train ``model`` in place with :func:`tinyprune.train.fit` for ``epochs`` epochs, recording
    the plane on (x_sample, y_sample) before training (epoch 0) and after every epoch. Returns
    (model, plane dict).

    When ``fit`` takes an ``on_epoch`` callback, this is one ``fit`` call (Adam, cosine schedule
    over all epochs): the same training as without the plane. Otherwise ``fit`` runs one epoch
    per call (a fresh Adam at a constant ``lr`` each epoch, seed + epoch for the shuffle)."""
    import inspect

    from tinyprune.config import FinetuneConfig
    from tinyprune.train import _quiet, fit

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
    rec = PlaneRecorder(model, x_sample, y_sample, layers=layers, method=methods, bins=bins, noise_var=noise_var,
                        **recorder_options)
    rec.record(0)
    if "on_epoch" in inspect.signature(fit).parameters:
        fit(model, x_train, y_train, FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size), seed,
            progress or _quiet, label, on_epoch=lambda epoch, _m: rec.record(epoch))
    else:
        cfg = FinetuneConfig(epochs=1, lr=lr, batch_size=batch_size)
        for epoch in range(1, epochs + 1):
            fit(model, x_train, y_train, cfg, seed + epoch, progress or _quiet, f"{label} {epoch}/{epochs}")
            rec.record(epoch)
    return model.eval(), rec.to_dict()


def _as_panels(data) -> list[tuple[str, dict]]:
    if isinstance(data, dict):
        return [("", data)]
    return [(title, d) for title, d in data]


def plot_plane(data, path, methods: Sequence[str] | None = None, title: str | None = None) -> None:
    """Write the information plane to ``path`` (PNG, matplotlib Agg).

    ``data``: one plane dict (:meth:`PlaneRecorder.to_dict`) or a list of ``(title, dict)`` to
    draw side by side (e.g. original and pruned). One row per method (shared axes within a
    row), one curve per layer through its epochs, points coloured by epoch; dashed red lines
    at the bounds ln N and H(Y). A row whose values all stay below 60 % of a bound zooms in on
    their range (the bound is then named in the axis label instead of drawn).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from matplotlib.lines import Line2D

    panels = _as_panels(data)
    if methods is None:
        methods = [m for m in METHODS if any(m in d["methods"] for _, d in panels)]
    last_epoch = max((max(d["epochs"]) if d["epochs"] else 0) for _, d in panels)
    norm = colors.Normalize(vmin=0, vmax=max(1, last_epoch))
    cmap = plt.get_cmap("viridis")
    markers = "osD^v<>pPX*h"
    fig, axes = plt.subplots(len(methods), len(panels), figsize=(4.8 * len(panels) + 1.2, 4.0 * len(methods)),
                             squeeze=False, layout="constrained")
    ln_n = max(d["ln_samples"] for _, d in panels)
    h_y = max(d["label_entropy"] for _, d in panels)
    for r, m in enumerate(methods):
        row = [(ax, ptitle, d) for ax, (ptitle, d) in zip(axes[r], panels)]
        xs_all = [v for _, _, d in row if m in d["methods"] for seq in d["methods"][m]["ixt"].values() for v in seq]
        ys_all = [v for _, _, d in row if m in d["methods"] for seq in d["methods"][m]["ity"].values() for v in seq]
        x_zoom = bool(xs_all) and max(xs_all) < 0.6 * ln_n
        y_zoom = bool(ys_all) and max(ys_all) < 0.6 * h_y
        def span(vals, zoom, bound, pad):
            if not zoom:
                return -0.02 * pad * bound, pad * bound
            lo, hi = min(vals), max(vals)
            margin = 0.12 * (hi - lo) + 0.02 * bound
            return max(0.0, lo - margin), hi + margin

        x_lim = span(xs_all, x_zoom, ln_n, 1.05)
        y_lim = span(ys_all, y_zoom, h_y, 1.08)
        for c, (ax, ptitle, d) in enumerate(row):
            if m not in d["methods"]:
                ax.set_visible(False)
                continue
            vals = d["methods"][m]
            epochs = d["epochs"]
            handles = []
            for i, layer in enumerate(d["layers"]):
                name = layer["name"]
                xs, ys = vals["ixt"][name], vals["ity"][name]
                marker = markers[i % len(markers)]
                ax.plot(xs, ys, color="0.6", lw=0.8, zorder=1)
                ax.scatter(xs, ys, c=[cmap(norm(e)) for e in epochs], marker=marker, s=30,
                           edgecolors="k", linewidths=0.4, zorder=2, clip_on=False)
                handles.append(Line2D([], [], ls="", marker=marker, mfc="white", mec="k",
                                      label=f"{name} (d={layer['dim']})"))
            if not x_zoom:
                ax.axvline(d["ln_samples"], color="tab:red", lw=0.8, ls="--")
            if not y_zoom:
                ax.axhline(d["label_entropy"], color="tab:red", lw=0.8, ls="--")
            ax.set_xlabel("I(X;T) [nats]" + (f"  (bound ln N = {d['ln_samples']:.2f})" if x_zoom else ""))
            nv = vals.get("noise_var")
            opt = (f"{vals['bins']} bins" if m == "binning"
                   else "noise var: median heuristic" if nv == "median" else f"noise var {nv:g}")
            if c == 0:
                ax.set_ylabel(f"{m}, {opt}\nI(T;Y) [nats]"
                              + (f"  (bound H(Y) = {d['label_entropy']:.2f})" if y_zoom else ""))
            if r == 0 and ptitle:
                ax.set_title(ptitle, fontsize=9)
            if d.get("accuracy"):
                ax.text(0.02, 0.97, f"sample acc {d['accuracy'][0]:.2f} -> {d['accuracy'][-1]:.2f}",
                        transform=ax.transAxes, fontsize=7, va="top")
            ax.legend(handles=handles, fontsize=7, loc="lower right", title="layer (marker)", title_fontsize=7)
            ax.set_xlim(*x_lim)
            ax.set_ylim(*y_lim)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="epoch", fraction=0.03, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_plane(data: dict, out_dir, name: str = "plane") -> dict[str, str]:
    """Write ``NAME.json`` and ``NAME.png`` into ``out_dir``; returns their paths."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_plane(data, out / f"{name}.png")
    return {"json": str(out / f"{name}.json"), "png": str(out / f"{name}.png")}


def plane_summary(data: dict) -> dict:
    """A small digest of a plane dict for report.json: per method and layer, I(X;T) and I(T;Y)
    at the first and the last recorded epoch, with the bounds."""
    layers = {}
    for m, vals in data["methods"].items():
        for layer in data["layers"]:
            n = layer["name"]
            ixt, ity = vals["ixt"][n], vals["ity"][n]
            if ixt:
                layers.setdefault(n, {"dim": layer["dim"]})[m] = {
                    "ixt_first": ixt[0], "ixt_last": ixt[-1], "ity_first": ity[0], "ity_last": ity[-1]}
    return {"samples": data["samples"], "epochs": data["epochs"][-1] if data["epochs"] else 0,
            "label_entropy": data["label_entropy"], "ln_samples": data["ln_samples"], "layers": layers}
