"""``anomem benchmark``: run a benchmark grid (resumable) and write its tables and plots.

Example::

    anomem benchmark benchmarks/configs/cpu.yaml --results benchmarks/results/cpu.jsonl
    anomem benchmark benchmarks/configs/cpu.yaml --report-only   # tables from finished cells

Every finished cell is stored at once; rerunning the same command skips them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anomem.errors import ConfigError, InvalidInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="run a resumable benchmark grid and write its tables",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="benchmark YAML (e.g. benchmarks/configs/cpu.yaml)")
    p.add_argument("--results", default=None,
                   help="results file, JSON Lines (default: benchmarks/results/<name>.jsonl)")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run only cell groups i, i+N, ... (several processes may share one "
                        "results file)")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    p.add_argument("--reverse", action="store_true",
                   help="walk the cell groups from the last one (a second process on the same "
                        "shard then meets the first in the middle)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--protocol", default="one_vs_all",
                   choices=("one_vs_all", "ood", "cross_type", "linear_eval"),
                   help="one_vs_all (the grid, default); ood: train on the first dataset, test "
                        "against each other one; cross_type: hold each anomaly class out of "
                        "training; linear_eval: linear probe of AnoMem encoders")
    p.add_argument("--report-only", action="store_true",
                   help="do not run anything; write the tables and plots of finished cells")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InvalidInputError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise InvalidInputError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def run(args: argparse.Namespace) -> int:
    from anomem.protocols.runner import load_grid, run_grid
    from anomem.reports.tables import write_reports

    grid = load_grid(args.config)
    results = Path(args.results or grid.get("results") or f"benchmarks/results/{grid['name']}.jsonl")
    shard = _shard(args.shard)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be a positive number of CPU threads, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.protocol != "one_vs_all":
        from anomem.protocols.runner import run_protocol
        out = Path(args.results or f"benchmarks/results/{grid['name']}_{args.protocol}.jsonl")
        added = run_protocol(grid, args.protocol, out)
        for row in added:
            print(f"{row['cell']}: " + ", ".join(f"{k} {row[k]:.4f}" for k in ("auroc", "accuracy")
                                                 if k in row))
        print(f"anomem benchmark: {len(added)} new {args.protocol} row(s) in {out}")
        return 0
    if not args.report_only:
        added = run_grid(grid, results, shard, progress=not args.no_progress,
                         max_cells=args.max_cells, reverse=args.reverse)
        print(f"anomem benchmark: {len(added)} new cell(s) in {results}")
    for path in write_reports(grid, results, results.parent):
        print(f"wrote {path}")
    return 0
