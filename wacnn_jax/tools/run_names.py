"""The names runs and models go by on disk: `<arch>-<attention>`, e.g. `resnet18-wa`.

    model_name("resnet18", "wa(wavelet='db2')")  # "resnet18-wa(wavelet=db2)"

A reproduction's cell folders (`reproduce`) and exported weights (`export`)
share it, so that a cell's final weights are found by its name.
"""

from __future__ import annotations


def model_name(arch: str, attention: str) -> str:
  """`<arch>-<attention>` of a canonical attention spec string, without quotes and spaces."""
  spec = attention.replace("'", "").replace('"', "").replace(" ", "")
  return f"{arch}-{spec}"
