"""The maintained benchmarks (see each folder's README.md).

Run a script from the repository root as a module, e.g.
``python -m benchmarks.speed.step_overhead --help``; scripts import their
siblings as ``benchmarks.<folder>.<module>`` and shared test helpers as
``tests.<module>``.
"""
