"""The public API: `from wacnn_jax import ...` is cheap, names the layers' objects, and the README's
"Wavelet Attention in your own Flax model" runs as written (checked against pywt)."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pywt

import wacnn_jax
from tests.helpers import REPO_ROOT
from wacnn_jax import models
from wacnn_jax.nn import attention
from wacnn_jax.nn import attention_spec
from wacnn_jax.nn import wavelets
from wacnn_jax import pretrained


def readme_block(name: str) -> str:
  """The Python code between the README's `<!-- name:begin -->` and `<!-- name:end -->`."""
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    text = f.read()
  block = text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]
  return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_the_public_names_are_the_layers_objects():
  assert wacnn_jax.WaveletAttention is attention.WaveletAttention
  assert wacnn_jax.SqueezeExcitation is attention.SqueezeExcitation
  assert wacnn_jax.AttentionSpec is attention_spec.AttentionSpec
  assert wacnn_jax.dwt2 is wavelets.dwt2 and wacnn_jax.idwt2 is wavelets.idwt2
  assert wacnn_jax.DWT2D is wavelets.DWT2D
  assert wacnn_jax.create_model is models.create_model
  assert wacnn_jax.pretrained is pretrained
  assert {"WaveletAttention", "dwt2", "create_model", "pretrained"} <= set(dir(wacnn_jax))


def test_importing_the_package_imports_nothing_heavy():
  program = ("import sys, wacnn_jax; print(sorted(m for m in ('jax', 'flax', 'orbax', "
             "'tensorflow', 'matplotlib', 'torch') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
  assert result.stdout.strip() == "[]"


def test_an_unknown_public_name_is_an_attribute_error():
  try:
    wacnn_jax.NoSuchThing  # pylint: disable=pointless-statement
  except AttributeError as e:
    assert "NoSuchThing" in str(e)
  else:
    raise AssertionError("no AttributeError")


def test_the_readme_own_model_example_runs_and_is_right():
  namespace = {}
  exec(readme_block("own-model"), namespace)  # pylint: disable=exec-used
  assert namespace["logits"].shape == (8, 10)
  assert namespace["logits"].dtype == jnp.float32
  assert namespace["bands"].shape == (8, 16, 16, 12)
  # The example's layers on real values, against PyWavelets in float64.
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
  bands = namespace["DWTDownsample"]().apply({}, jnp.asarray(x, jnp.float32))
  cA, (cH, cV, cD) = pywt.dwt2(x, "db2", mode="periodization", axes=(1, 2))
  np.testing.assert_allclose(bands, np.concatenate([cA, cH, cV, cD], -1), atol=1e-5)
  again = namespace["idwt2"](jnp.split(bands, 4, axis=-1), "db2")
  np.testing.assert_allclose(again, x, atol=1e-5)
  # SmallWANet's downsampling is Wavelet Attention: two blocks, each halving the map.
  model = namespace["SmallWANet"]()
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
  _, state = model.apply(variables, jnp.asarray(x, jnp.float32), mutable=["intermediates"])
  outs = [v["out"][0].shape for v in state["intermediates"].values()]
  assert outs == [(2, 16, 16, 32), (2, 8, 8, 64)]
