"""Mean AUROC per method over the classes that every method finished for every draw.

A partly finished grid (``anomem benchmark ... --report-only`` averages whatever
cells exist) is summarised here on a common set of cells: for each draw, the
mean over those classes; then mean ± std over draws, and the worst class.

    python -m experiments.digits_ablation.complete_cells \\
        experiments/digits_ablation/quality_digits_ablation.jsonl
"""

from __future__ import annotations

import collections
import sys

import numpy as np

from anomem.protocols.results import read_results


def main(path: str) -> None:
    by: dict[str, dict[tuple[int, int], float]] = collections.defaultdict(dict)
    for r in read_results(path):
        by[r["method"]][(r["normal_class"], r["draw"])] = r["auroc"]
    draws = sorted({d for cells in by.values() for _, d in cells})
    classes = sorted({c for cells in by.values() for c, _ in cells})
    full = [c for c in classes if all((c, d) in cells for cells in by.values() for d in draws)]
    print(f"classes finished by every method for draws {draws}: {full}")
    print("| method | mean ± std over draws | worst class |\n|---|---|---|")
    for m, cells in by.items():
        per_draw = [np.mean([cells[(c, d)] for c in full]) for d in draws]
        worst = min(np.mean([cells[(c, d)] for d in draws]) for c in full)
        print(f"| {m} | {100 * np.mean(per_draw):.1f} ± {100 * np.std(per_draw):.1f} | {100 * worst:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
