"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_channel_mi(layers: list[dict], label_entropy: float, path: Path, marked: dict | None = None) -> None:
    """One panel per layer: I(T_c; Y) of every channel, sorted, against H(Y); with ``marked``, the
    channels in each layer's ``removed`` list are drawn in another colour and named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 1, 3.2), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        order = sorted(range(len(layer["relevance"])), key=lambda c: -layer["relevance"][c])
        gone = set(layer.get("removed", []))
        colors = ["tab:orange" if c in gone else "tab:blue" for c in order]
        ax.bar(range(len(order)), [layer["relevance"][c] for c in order], width=1.0, color=colors)
        ax.axhline(label_entropy, color="tab:red", lw=1, ls="--")
        title = f"{layer['name']} ({layer['channels']})"
        ax.set_title(title + (f", {len(gone)} removed" if marked else ""), fontsize=9)
        ax.set_xlabel("channel (sorted)", fontsize=8)
    axes[0][0].set_ylabel("I(T_c; Y) [nats]")
    axes[0][-1].text(0.98, label_entropy, "H(Y)", color="tab:red", ha="right", va="bottom",
                     transform=axes[0][-1].get_yaxis_transform(), fontsize=8)
    if marked:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color="tab:blue", label="kept"),
                            Patch(color="tab:orange", label=f"removed by {marked['criterion']} at "
                                                            f"{marked['sparsity']:.0%} of the MACs")],
                   loc="upper right", fontsize=8, ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if marked else None)
    fig.savefig(path, dpi=110)
    plt.close(fig)
