"""Fuzzing benchmark: tens of thousands of generated inputs through every reader and the CLI.

Not part of the test suite (``tests/test_fuzz.py`` runs a few hundred examples
per reader there).  Generators and checks come from ``tests/fuzzing.py``; this
script adds the readers the suite does not fuzz (detector inputs and labels,
CIFAR python archives, benchmark grids, results files) and the command line,
called in-process through :func:`anomem.cli.main.main`.

Every example ends in one of these outcomes, counted per target:

* ``accepted``: a valid result (checked where a check exists);
* ``refused``: an :class:`anomem.AnoMemError` (for the CLI: exit status 2 with
  one error line, or an argparse usage error);
* ``bug``: any other exception, or a result that fails its check;
* ``timeout``: the example ran past ``--example-timeout`` seconds.

Usage (from the repository root)::

    python -m benchmarks.fuzz.run_fuzz --seed 0 --out benchmarks/fuzz/results.json

``--scale 0.1`` runs a tenth of the examples.  Example files are written
under a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import tests.fuzzing as fz
from anomem import AnoMem, AnoMemError, __version__
from anomem.cli.main import main as cli_main
from anomem.config import get_config
from anomem.data.cifar import read_cifar10_python, read_cifar100_python
from anomem.protocols.results import read_results
from anomem.protocols.runner import GRID_KEYS, load_grid

ROOT = Path(__file__).resolve().parents[2]


class ExampleTimeout(BaseException):
    """Raised by the alarm inside an example that runs too long (not an Exception, so that
    no ``except Exception`` in the code under test swallows it)."""


# ------------------------------------------------------------------ targets without a check in the suite
TINY = {"width": 4, "mem_sizes": [4, 4], "stage1_epochs": 0, "stage2_epochs": 0, "batch_size": 8}


def tiny_detector() -> AnoMem:
    det = AnoMem(get_config("digits", TINY))
    det.fit(np.random.default_rng(0).integers(0, 256, (8, 8, 8), dtype=np.uint8))
    return det


def check_scores(det: AnoMem) -> Callable[[Any], bool]:
    """``decision_function`` on fuzzed images: one finite-or-not float per image, or refused."""
    def check(images: Any) -> bool:
        try:
            s = det.decision_function(images)
        except AnoMemError:
            return True
        assert isinstance(s, np.ndarray) and s.ndim == 1, s
        return False
    return check


labels_inputs = st.one_of(
    st.none(), fz.small_arrays, st.lists(st.one_of(st.integers(-2, 3), st.floats(), st.text(max_size=2)),
                                         max_size=10), fz.odd_things)
fit_inputs = st.tuples(st.one_of(fz.small_arrays, st.integers(1, 12).map(
    lambda n: np.random.default_rng(n).integers(0, 256, (n, 8, 8), dtype=np.uint8))), labels_inputs)


def check_fit(arg: tuple[Any, Any]) -> bool:
    images, labels = arg
    try:
        det = AnoMem(get_config("digits", TINY)).fit(images, labels)
    except AnoMemError:
        return True
    assert det.network_ is not None
    return False


def cifar_python_tar(fine: bool) -> bytes:
    """A well-formed ``cifar-10-batches-py`` (or ``cifar-100-python``) tar.gz, two images a batch."""
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    if fine:
        batch = {b"data": data, b"fine_labels": [0, 1], b"coarse_labels": [0, 1]}
        meta = {b"fine_label_names": [b"a", b"b"], b"coarse_label_names": [b"a", b"b"]}
        members = {"cifar-100-python/train": batch, "cifar-100-python/test": batch,
                   "cifar-100-python/meta": meta}
    else:
        members = {f"cifar-10-batches-py/{n}": {b"data": data, b"labels": [0, 1]}
                   for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    return fz.tar_gz({k: pickle.dumps(v, protocol=2) for k, v in members.items()})


grid_dicts = st.dictionaries(st.one_of(st.sampled_from(sorted(GRID_KEYS)), st.text(max_size=6)),
                             fz.values, max_size=6)
grid_texts = st.one_of(fz.yaml_texts, grid_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
grid_files = grid_texts.map(lambda t: t.encode("utf-8", "surrogatepass"))
check_grid = fz.check_dataset(load_grid, ".yaml", lambda g: isinstance(g, dict) and {
    "name", "methods", "datasets"} <= set(g), AnoMemError)
results_files = st.one_of(st.binary(max_size=600), st.lists(st.one_of(
    st.text(max_size=40), fz.values.map(lambda v: json.dumps(v, default=str))), max_size=8).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")))
check_results = fz.check_dataset(read_results, ".jsonl", lambda rows: isinstance(rows, list) and all(
    isinstance(r, dict) for r in rows), AnoMemError)


# ------------------------------------------------------------------ the command line
SAFE_TEXT = st.text(alphabet="abcxyz019.-=_ ,[]:", max_size=8)   # no path separators
# mostly numbers argparse takes (an option's value is the point), sometimes text it refuses
NUMBER = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True).map(str),
                   st.floats(0, 1).map(str), SAFE_TEXT.filter(lambda s: len(s) > 3))
# keys whose value changes the run time or memory (an override of them could be legal but slow)
COSTLY = {"stage1_epochs", "stage2_epochs", "width", "image_size", "batch_size", "mem_sizes", "arch",
          "hopfield_steps", "head_hidden", "memory_stages", "stem", "device"}
OVERRIDE = st.one_of(st.sampled_from(["seed=3", "target_frr=0.05", "width=-1", "nope=1", "=", "beta",
                                      "prototypes=kmeans", "negatives=same_position"]),
                     fz.override_texts.filter(lambda t: t.split("=", 1)[0].strip() not in COSTLY))
FORCED = ["--set", "stage1_epochs=0", "--set", "stage2_epochs=0", "--set", "width=4",
          "--set", "mem_sizes=[4, 4]", "--set", "batch_size=8"]
FOLDERS = ["@good", "@anom", "@empty", "@mixed", "@missing", "@file", "@text"]
MODELS = ["@model", "@model", "@nothreshold", "@fuzzmodel", "@fuzzmodel", "@text", "@missing", "@good"]
CONFIGS = ["@tiny_yaml", "@tiny_yaml", "@fuzzyaml", "digits", "cpu", "nopreset", "@missing"]


def opt(flag: str, value: st.SearchStrategy) -> st.SearchStrategy[list[str]]:
    """``[flag, value]`` or nothing."""
    return st.one_of(st.just([]), value.map(lambda v: [flag, *(v if isinstance(v, list) else [v])]))


def argv(*parts: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda ps: [a for p in ps for a in p])


def fixed(*tokens: str) -> st.SearchStrategy[list[str]]:
    return st.just(list(tokens))


folder = st.sampled_from(FOLDERS)
bad_images = opt("--bad-images", st.sampled_from(["fail", "skip", "skip", "maybe"]))
fit_argv = argv(fixed("fit"), folder.map(lambda f: [f]), opt("--anomalies", folder),
                opt("-o", st.sampled_from(["out.anomem", "sub/out.anomem", "@good"])),
                opt("--config", st.sampled_from(CONFIGS)),
                st.lists(OVERRIDE, max_size=2).map(lambda os: [a for o in os for a in ("--set", o)]),
                opt("--validation-fraction", NUMBER), opt("--threshold", NUMBER), bad_images,
                fixed("-q", *FORCED))
score_argv = argv(fixed("score"), st.sampled_from(MODELS).map(lambda m: [m]),
                  st.lists(folder, min_size=0, max_size=3),
                  opt("-o", st.sampled_from(["s.csv", "-", "@good"])),
                  opt("--heatmaps", st.sampled_from(["heat", "@file"])), opt("--threshold", NUMBER),
                  opt("--batch-size", NUMBER), bad_images, fixed("-q"))
evaluate_argv = argv(fixed("evaluate"), st.sampled_from(MODELS).map(lambda m: [m]),
                     opt("--normal", folder), opt("--anomalies", folder),
                     opt("--report", st.sampled_from(["rep", "@file"])),
                     opt("--format", st.sampled_from(["html", "md", "md", "pdf"])),
                     opt("--threshold", NUMBER),
                     opt("--top", NUMBER), bad_images, fixed("-q"))
export_argv = argv(fixed("export"), st.sampled_from(MODELS).map(lambda m: [m]),
                   opt("--format", st.sampled_from(["onnx", "torchscript", "tf"])),
                   opt("-o", st.sampled_from(["m.onnx", "m.pt", "@good", "sub/m.x"])),
                   opt("--check", st.lists(folder, min_size=1, max_size=2)))
demo_argv = argv(fixed("demo"), opt("--gammas", st.lists(NUMBER, min_size=1, max_size=2)),
                 st.lists(st.one_of(st.integers(-1, 10).map(str), SAFE_TEXT), min_size=1, max_size=2).map(
                     lambda cs: ["--classes", *cs]),          # at most two classes: a short run
                 opt("--seed", NUMBER), st.lists(OVERRIDE, max_size=1).map(
                     lambda os: [a for o in os for a in ("--set", o)]),
                 fixed(*FORCED))
# a fuzzed grid is only read and reported on; the tiny valid grid is also run (one knn cell)
benchmark_argv = st.one_of(
    argv(fixed("benchmark", "@fuzzgrid", "--report-only", "--results"),
         st.sampled_from(["@results", "@fuzzresults", "r.jsonl"]).map(lambda r: [r]),
         opt("--shard", SAFE_TEXT), fixed("--no-progress")),
    argv(fixed("benchmark", "@grid", "--results"),
         st.sampled_from(["@results", "@fuzzresults", "r.jsonl"]).map(lambda r: [r]),
         opt("--shard", st.one_of(st.sampled_from(["0/1", "1/2", "2/2", "0/0"]), SAFE_TEXT)),
         opt("--max-cells", st.sampled_from(["0", "1", "-1", "x"])),
         opt("--threads", st.sampled_from(["1", "0", "-2", "x"])), opt("--report-only", st.just([])),
         opt("--protocol", st.sampled_from(["one_vs_all", "cross_type", "ood", "nope"])),
         fixed("--no-progress")))
FLAGS = ["fit", "score", "evaluate", "export", "--help", "--version", "-o", "--set", "--format", "-q",
         "--threshold", "--anomalies", "--normal", "@good", "@model"]
random_argv = st.lists(st.one_of(st.sampled_from(FLAGS), SAFE_TEXT), max_size=6).filter(
    lambda a: not a or a[0] not in ("demo", "benchmark"))
cli_examples = st.one_of(fit_argv, score_argv, evaluate_argv, export_argv, benchmark_argv, random_argv,
                         demo_argv)   # the '@fuzz*' files' bytes are drawn alongside (run_target)


class Workspace:
    """Fixed example files (a few images, a tiny model, configs, a grid) in a temporary folder."""

    def __init__(self, base: Path, model: bytes) -> None:
        self.base, self.model = base, model
        rng = np.random.default_rng(0)
        good = [("good", f"{i}.png", fz.png(rng.integers(0, 256, (8, 8), dtype=np.uint8))) for i in range(6)]
        anom = [(f"anom/type{t}", f"{i}.png", fz.png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
                for t in "ab" for i in range(2)]
        mixed = good[:3] + [("good", "cut.png", good[0][2][:40]), ("good", "notes.txt", b"hello")]
        fz.write_tree(base, good + anom + [("empty", ".keep", b"")])
        fz.write_tree(base / "mixed_root", mixed)
        (base / "file.png").write_bytes(good[1][2])
        (base / "text.txt").write_text("not an image\n")
        (base / "model.anomem").write_bytes(model)
        det = AnoMem.load(base / "model.anomem")
        det.threshold_ = None
        det.save(base / "nothreshold.anomem")
        (base / "tiny.yaml").write_text(yaml.safe_dump({"preset": "digits", **TINY}))
        (base / "grid.yaml").write_text(yaml.safe_dump({
            "name": "fz", "preset": "digits", "overrides": dict(TINY), "datasets": ["digits"],
            "classes": [0], "gammas": [0.0], "train_per_class": 6, "test_per_class": 3,
            "methods": [{"name": "knn"}]}))
        (base / "results.jsonl").write_text(json.dumps({"cell": "knn|digits|0|0|0", "auroc": 0.5}) + "\n")
        self.paths = {"@good": base / "good", "@anom": base / "anom", "@empty": base / "empty",
                      "@mixed": base / "mixed_root", "@missing": base / "no_such_thing",
                      "@file": base / "file.png", "@text": base / "text.txt",
                      "@model": base / "model.anomem", "@nothreshold": base / "nothreshold.anomem",
                      "@tiny_yaml": base / "tiny.yaml", "@grid": base / "grid.yaml",
                      "@results": base / "results.jsonl"}


def cli_target(ws: Workspace, work: Path) -> Callable[[Any], str]:
    """Run one command line in a fresh folder; fuzzed files replace the '@fuzz*' placeholders."""
    made: Iterator[int] = iter(range(10 ** 9))

    def run(args: list[str], payloads: dict[str, bytes]) -> str:
        cwd = work / str(next(made))
        cwd.mkdir(parents=True)
        files = {"@fuzzmodel": ".anomem", "@fuzzyaml": ".yaml", "@fuzzgrid": ".yaml",
                 "@fuzzresults": ".jsonl"}
        resolved = []
        for a in args:
            if a in files:
                p = cwd / f"{a[1:]}{files[a]}"
                p.write_bytes(payloads[a])
                resolved.append(str(p))
            else:
                resolved.append(str(ws.paths[a]) if a in ws.paths else a)
        before, old = torch.get_num_threads(), os.getcwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    rc = cli_main(resolved)
                except SystemExit as e:            # argparse: usage error (2), --help / --version (0)
                    rc = e.code if isinstance(e.code, int) else 2
        finally:
            os.chdir(old)
            torch.set_num_threads(before)
            shutil.rmtree(cwd, ignore_errors=True)
        if rc == 0:
            return "accepted"
        if rc == 2:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            assert lines and ": error: " in lines[-1], f"exit status 2 without an error line: {lines}"
            if any(ln.startswith("usage: ") for ln in lines):
                return "refused: usage error (argparse)"
            return "refused: AnoMemError (one line, exit status 2)"
        raise AssertionError(f"exit status {rc}: {err.getvalue()[-300:]}")
    return run


# ------------------------------------------------------------------ the driver
def hypothesis_settings(n: int) -> settings:
    return settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck), print_blob=False)


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise ExampleTimeout
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def where(e: BaseException) -> str:
    """The innermost frame of ``e``'s traceback inside anomem (else the innermost), as path:line."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if f"{os.sep}anomem{os.sep}" in f.filename] or frames
    f = ours[-1]
    path = Path(f.filename)
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{f.lineno}"


def short(x: Any, n: int = 300) -> str:
    r = repr(x)
    return r if len(r) <= n else r[:n] + f"... ({len(r)} chars)"


def run_target(name: str, strategy: st.SearchStrategy, check: Callable[..., Any], n: int, seed_: int,
               timeout: float, payload_strategies: dict[str, st.SearchStrategy] | None = None
               ) -> dict[str, Any]:
    """Feed ``n`` examples of ``strategy`` to ``check``; count outcomes, keep bug reproducers."""
    counts: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    bugs: dict[str, dict[str, Any]] = {}      # kind -> count and the first reproducers

    def keep(kind: str, **example: str) -> None:
        entry = bugs.setdefault(kind, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 3:
            entry["examples"].append(example)

    payloads = payload_strategies or {}
    t0 = time.perf_counter()

    @seed(seed_)
    @hypothesis_settings(n)
    @given(strategy, st.fixed_dictionaries(payloads))
    def one(example: Any, drawn: dict[str, bytes]) -> None:
        try:
            with alarm(timeout), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = check(example, drawn) if payloads else check(example)
            if isinstance(out, str):                # the CLI: "accepted" or "refused: <how>"
                counts[out.split(":")[0]] += 1
                if out != "accepted":
                    refusals[out.split(": ", 1)[1]] += 1
            else:                                   # a check: True = the documented error
                counts["refused" if out else "accepted"] += 1
                refusals["documented error"] += bool(out)
        except ExampleTimeout:
            counts["timeout"] += 1
            keep("timeout", example=short(example), payloads=short(drawn))
        except AnoMemError as e:                   # a clean error of another class than the check's
            counts["refused"] += 1
            refusals[type(e).__name__] += 1
        except Exception as e:                     # everything else is a bug
            counts["bug"] += 1
            keep(f"{type(e).__module__}.{type(e).__qualname__} at {where(e)}", example=short(example),
                 payloads=short(drawn), error=short(str(e), 200))
    one()
    total = sum(counts.values())
    row = {"target": name, "examples": total, "accepted": counts["accepted"], "refused": counts["refused"],
           "bug": counts["bug"], "timeout": counts["timeout"], "refusals": dict(refusals),
           "seconds": round(time.perf_counter() - t0, 1), "bugs": bugs}
    print(f"{name:32s} {total:6d} examples  accepted {row['accepted']:5d}  refused {row['refused']:5d}  "
          f"bug {row['bug']:4d}  timeout {row['timeout']:3d}  {row['seconds']:7.1f} s", flush=True)
    return row


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
             if ln.startswith("model name")] if info.exists() else []
    return names[0] if names else platform.machine()


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every target's example count")
    p.add_argument("--example-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--only", nargs="+", metavar="TARGET", help="run only these targets")
    p.add_argument("--out", default=None, help="results JSON (default: print only)")
    args = p.parse_args(argv_)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anomem_fuzz_") as tmp:
        base = Path(tmp)
        model = fz.tiny_model_file(base)
        ws = Workspace(base / "ws", model)
        det = tiny_detector()
        c10, c100 = cifar_python_tar(False), cifar_python_tar(True)
        cli_payloads = {"@fuzzmodel": fz.mutations(model),
                        "@fuzzyaml": fz.yaml_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
                        "@fuzzgrid": grid_files,
                        "@fuzzresults": results_files}
        targets: list[tuple[str, st.SearchStrategy, Callable[..., Any], int, dict | None]] = [
            ("to_image_tensor", fz.image_args, fz.check_image_tensor, 3000, None),
            ("AnoMem.decision_function", fz.image_inputs, check_scores(det), 600, None),
            ("AnoMem.fit (images, labels)", fit_inputs, check_fit, 300, None),
            ("config dicts", fz.config_dicts, fz.check_config_dict, 2000, None),
            ("config YAML files", fz.yaml_texts, fz.check_yaml, 1500, None),
            ("key=value overrides", fz.override_texts, fz.check_override, 1500, None),
            ("benchmark grid YAML", grid_files, check_grid, 1000, None),
            ("results JSONL", results_files, check_results, 600, None),
            ("image files", fz.image_files, fz.check_image_file, 1500, None),
            ("class folders", fz.folder_trees, fz.check_class_folders(base / "folders"), 400, None),
            ("CIFAR-10 JPEG tar", fz.cifar_tars(fz.cifar_tar()), fz.check_cifar_tar, 400, None),
            ("CIFAR python batch", fz.mutations(fz.cifar_batch()), fz.check_cifar_batch, 1000, None),
            ("CIFAR-10 python tar", fz.mutations(c10), fz.check_dataset(
                read_cifar10_python, ".tar.gz", lambda s: s.x_train.shape[1:] == (32, 32, 3)), 300, None),
            ("CIFAR-100 python tar", fz.mutations(c100), fz.check_dataset(
                read_cifar100_python, ".tar.gz", lambda s: s.x_train.shape[1:] == (32, 32, 3)), 300, None),
            ("MTD archive", fz.mutations(fz.mtd_tar()), fz.check_mtd_tar, 400, None),
            ("AnoMem.load (model files)", fz.mutations(model), fz.check_model_file(model), 1000, None),
            ("CLI (anomem.cli.main.main)", cli_examples, cli_target(ws, base / "cli"), 3000, cli_payloads),
        ]
        rows = []
        for name, strategy, check, n, payloads in targets:
            if args.only and name not in args.only:
                continue
            rows.append(run_target(name, strategy, check, max(1, round(n * args.scale)), args.seed,
                                   args.example_timeout, payloads))
    total = {k: sum(r[k] for r in rows) for k in ("examples", "accepted", "refused", "bug", "timeout")}
    print(f"{'total':32s} {total['examples']:6d} examples  accepted {total['accepted']:5d}  refused "
          f"{total['refused']:5d}  bug {total['bug']:4d}  timeout {total['timeout']:3d}  "
          f"{time.perf_counter() - t0:7.1f} s")
    result = {"seed": args.seed, "scale": args.scale, "example_timeout_s": args.example_timeout,
              "wall_s": round(time.perf_counter() - t0, 1), "total": total, "targets": rows,
              "machine": {"cpu": cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(),
                          "torch_threads": 1, "python": platform.python_version(),
                          "torch": torch.__version__, "anomem": __version__}}
    if args.out:   # example files lived in temporary folders: their paths are not kept
        text = json.dumps(result, indent=1).replace(tmp, "<tmp>").replace(tempfile.gettempdir(), "<tmp>")
        Path(args.out).write_text(text + "\n")
    return 1 if total["bug"] else 0


if __name__ == "__main__":
    sys.exit(main())
