"""The ``anomem`` command: one sub-command per module of :mod:`anomem.cli`.

Every sub-command module exposes ``add_parser(subparsers)`` and ``run(args)``;
:data:`COMMANDS` is the flat registry.  Errors the library raises on purpose
(:class:`~anomem.errors.AnoMemError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from anomem import __version__
from anomem.cli import benchmark, demo, evaluate, export, fit, score
from anomem.errors import AnoMemError

COMMANDS: dict[str, ModuleType] = {"fit": fit, "score": score, "evaluate": evaluate, "export": export,
                                    "demo": demo, "benchmark": benchmark}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomem",
        description="AnoMem anomaly detection: multi-scale contrasted memory, one-class or "
                    "semi-supervised. Scores are higher for more anomalous images.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"anomem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except AnoMemError as e:
        print(f"anomem {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:        # an output path that is a folder, a full disk, no permission
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"anomem {args.command}: error: {e.strerror or e}{where}; choose another path or "
              f"free the space and run it again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"anomem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
