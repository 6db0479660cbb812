"""LeaF engine: confounder detection, pruning and causal attention distillation.

Importing the package is cheap; torch and transformers load with the modules that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Example": "leaf_engine.data",
    "read_examples": "leaf_engine.data",
    "LoadedModel": "leaf_engine.models",
    "load_model": "leaf_engine.models",
    "token_saliency": "leaf_engine.saliency",
    "SaliencyInput": "leaf_engine.saliency",
    "DetectConfig": "leaf_engine.analysis",
    "Detector": "leaf_engine.detect",
    "Analysis": "leaf_engine.analysis",
    "decide": "leaf_engine.analysis",
    "DetectionRecord": "leaf_engine.records",
    "find_spans": "leaf_engine.prune",
    "remove_spans": "leaf_engine.prune",
    "LeafError": "leaf_engine.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'leaf_engine' has no attribute {name!r}")
