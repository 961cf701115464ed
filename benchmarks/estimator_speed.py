"""Issue 3: estimator speed. MI of every channel of ResNet-8 over N = 2,000 Fashion-MNIST images.

Each estimator is timed against a plain matmul of the same size: the N x N Gram matrix of the
[N, C] activations of all channels (X @ X.T), which any pairwise (KDE / Renyi) estimator must at
least compute. Median of 3 runs each, side by side in one process.

    python -m benchmarks.estimator_speed [--methods kde,binning,renyi]
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import ResNet8, load_dataset, markdown_table
from tinyprune.information import capture_activations, channel_mi


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="kde,binning,renyi")
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, ytr, _, _ = load_dataset("fashion-mnist")
    x, y = xtr[:2000], ytr[:2000]
    torch.manual_seed(0)
    model = ResNet8().eval()
    t_capture = timed(lambda: capture_activations(model, x), repeats=1)
    acts = capture_activations(model, x)
    channels = sum(a.shape[1] for a in acts.values())
    all_acts = torch.cat(list(acts.values()), dim=1)
    t_matmul = timed(lambda: all_acts @ all_acts.T)
    rows = [["capture (one forward pass)", f"{t_capture:.2f}", ""], ["matmul X @ X.T [N, C]", f"{t_matmul:.3f}", "1.0"]]
    for method in args.methods.split(","):
        reps = 1 if method == "renyi" else 3
        t = timed(lambda: [channel_mi(a, y, method=method) for a in acts.values()], repeats=reps)
        rows.append([f"channel_mi {method}", f"{t:.2f}", f"{t / t_matmul:.1f}"])
        print(rows[-1], flush=True)
    print(f"ResNet-8, {len(acts)} layers, {channels} channels, N = {len(x)}, one thread")
    print(markdown_table(["step", "seconds", "x matmul"], rows))


if __name__ == "__main__":
    main()
