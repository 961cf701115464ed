"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_channel_mi(layers: list[dict], label_entropy: float, path: Path) -> None:
    """One panel per layer: I(T_c; Y) of every channel, sorted, against H(Y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 1, 3.2), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        values = sorted(layer["relevance"], reverse=True)
        ax.bar(range(len(values)), values, width=1.0, color="tab:blue")
        ax.axhline(label_entropy, color="tab:red", lw=1, ls="--")
        ax.set_title(f"{layer['name']} ({layer['channels']})", fontsize=9)
        ax.set_xlabel("channel (sorted)", fontsize=8)
    axes[0][0].set_ylabel("I(T_c; Y) [nats]")
    axes[0][-1].text(0.98, label_entropy, "H(Y)", color="tab:red", ha="right", va="bottom",
                     transform=axes[0][-1].get_yaxis_transform(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
