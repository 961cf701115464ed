"""Table (mean +- std over seeds) from the JSON lines a `benchmarks.mi_vs_l1` run printed so far.

    python -m benchmarks.summarize_mi benchmarks/out/mi_resnet8.log
"""

import json
import sys

import numpy as np

from benchmarks.common import markdown_table


def main(path: str) -> None:
    runs = []
    for line in open(path):
        if line.startswith("{"):
            runs.append(json.loads(line))
    rows = []
    keys = sorted({(r["level"], r["criterion"]) for r in runs}, key=lambda k: (k[0], k[1]))
    for level, criterion in keys:
        rs = [r for r in runs if r["level"] == level and r["criterion"] == criterion and "failed" not in r]
        if not rs:
            rows.append([f"{level:.0%}", criterion, "target not reached", "", "", "", ""])
            continue
        acc = np.array([r["acc_finetuned"] for r in rs])
        acc0 = np.array([r["acc_pruned"] for r in rs])
        rows.append([f"{level:.0%}", criterion, f"{np.mean([r['macs_removed'] for r in rs]):.1%}",
                     f"{100 * acc0.mean():.2f} ± {100 * acc0.std():.2f}", f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}",
                     f"{np.mean([r['prune_seconds'] for r in rs]):.1f}", str(len(rs))])
    print(markdown_table(["MACs target", "criterion", "MACs removed", "acc. after pruning %", "acc. after fine-tune %",
                          "prune + MI analysis s", "seeds"], rows))


if __name__ == "__main__":
    main(sys.argv[1])
