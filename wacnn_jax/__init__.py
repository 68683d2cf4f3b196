"""wacnn_jax: Wavelet-Attention CNNs (WA-CNN, arXiv 2201.09271) in JAX/Flax.

The public API, for use in one's own Flax code (imported on first use, so
that `import wacnn_jax` stays cheap):

    from wacnn_jax import WaveletAttention, dwt2, idwt2, create_model
    out, ll = WaveletAttention(wavelet="haar")(x)            # x: NHWC (N, H, W, C)
    ll, lh, hl, hh = dwt2(x, "db2")                          # pywt's cA, cH, cV, cD
    model = create_model("resnet18", num_classes=10, attention="wa")
    net = pretrained.load("resnet18-wa")                     # trained weights

The package is a house in layers, each a folder that imports only the ones
below it (checked by import-linter, `tests/test_import_layers.py`):

    cli         dispatches `python -m wacnn_jax COMMAND` to its tool
    tools       one module per command (train, evaluate, report, visualize,
                reproduce, export) and what they share
    training    train_and_evaluate and everything a run is made of   | beside
    pretrained  trained weights: the format, load, list              | each other
    data        every source read, checked, cached and augmented
    models      the backbones by name (create_model), fast init
    nn          the building blocks: DWT/IDWT, depthwise convolution,  | beside
                PyTorch-equivalent layers, the attention modules      | each other
    files       files replaced atomically, JSON records read back     |
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "WaveletAttention": "wacnn_jax.nn.attention",
    "SqueezeExcitation": "wacnn_jax.nn.attention",
    "CBAM": "wacnn_jax.nn.attention",
    "ECA": "wacnn_jax.nn.attention",
    "GlobalContext": "wacnn_jax.nn.attention",
    "AttentionSpec": "wacnn_jax.nn.attention_spec",
    "dwt2": "wacnn_jax.nn.wavelets",
    "idwt2": "wacnn_jax.nn.wavelets",
    "DWT2D": "wacnn_jax.nn.wavelets",
    "IDWT2D": "wacnn_jax.nn.wavelets",
    "create_model": "wacnn_jax.models",
}
# Public subpackages (`wacnn_jax.pretrained.load(...)`).
_SUBPACKAGES = ("pretrained", "models", "nn", "data", "training", "tools", "files")

__all__ = sorted(_PUBLIC) + ["pretrained"]


def __getattr__(name: str) -> Any:
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  if name in _SUBPACKAGES:
    return importlib.import_module(f"wacnn_jax.{name}")
  raise AttributeError(f"module 'wacnn_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_PUBLIC) | set(_SUBPACKAGES))
