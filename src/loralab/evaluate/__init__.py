"""Drift evaluation: benchmarks, reasoning, in-domain gain, contamination and ΔW diagnostics."""

from .run import SUITES, EvalConfig, evaluate

__all__ = ["EvalConfig", "SUITES", "evaluate"]
