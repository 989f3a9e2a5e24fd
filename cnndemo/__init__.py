"""CNN Zoo Lab: see how classic CNNs see. The library; the Gradio app lives in ``cnndemo.ui``.

>>> from cnndemo import predict, explore, attribute
>>> predict("assets/examples/cat.jpg", "googlenet").top[0]

Names are imported on first use, so ``import cnndemo`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    # the zoo
    "ZOO": "zoo",
    "get_spec": "zoo",
    "ModelSpec": "specs",
    "BlockSpec": "specs",
    "BranchSpec": "specs",
    # models and weights
    "STORE": "runtime",
    "LoadedModel": "runtime",
    "WeightsInfo": "weights",
    "WeightsError": "weights",
    "fetch": "weights",
    # images
    "open_image": "images",
    "ImageError": "images",
    "normalize_digit": "digits",
    "EmptyDrawing": "digits",
    # views
    "predict": "predict",
    "Prediction": "predict",
    "explore": "branches",
    "ablate": "branches",
    "block_infos": "branches",
    "attribute": "attribution",
    "METHODS": "attribution",
    "model_stats": "costs",
    "FLOPS_CONVENTION": "costs",
    "run_benchmark": "bench",
    "train": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnndemo' has no attribute {name!r}")
