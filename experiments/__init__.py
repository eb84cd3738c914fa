"""Benchmark and reproduction scripts; each writes a table to experiments/results/.

A package: run every script from the repository root as a module,

    python -m experiments.NAME [flags]          # e.g. python -m experiments.frontier --help

(`python experiments/NAME.py` does not work: the scripts import `experiments.common` and
`adaflow` as packages). Helpers shared by the scripts are in experiments/common.py.
"""
