"""What a run writes about itself when it starts: config.json, dataset.json, the model summary.

    write_run_info(config, workdir, dataset, state)

`model_summary` counts parameters and FLOPs per image and tabulates the
layers (model_summary.txt / .json); `report` and `reproduce` read them back.
"""

from __future__ import annotations

import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from wacnn_jax.data import checks
from wacnn_jax.data.dataset import Dataset
from wacnn_jax.files import atomic
from wacnn_jax.training import states
from wacnn_jax.training import steps


def model_summary(model, variables, image_shape) -> dict:
  """Parameter count, FLOPs per image and the layer table.

  FLOPs: XLA's cost analysis of the unoptimised HLO of the eval forward pass,
  lowered for the host CPU on every machine (GPU backends either give no
  analysis before compilation or, after it, do not count cuDNN's
  convolutions).
  """
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  host = jax.local_devices(backend="cpu")[0]
  lowered = jax.jit(functools.partial(model.apply, train=False)).lower(
      *jax.device_put((variables, x), host))
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", float("nan")))
  table = model.tabulate(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x,
      train=False, console_kwargs={"width": 200, "force_terminal": False})
  return {"params": params, "flops_per_image": flops, "table": table}



def write_model_summary(workdir: str, summary: dict, description: str) -> None:
  """workdir/model_summary.txt (`description`, counts and the layer table) and .json (counts)."""
  with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
    f.write(f"{description}\n"
            f"parameters: {summary['params']:,}\n"
            f"FLOPs per image (XLA cost analysis, eval forward): "
            f"{summary['flops_per_image']:,.0f}\n\n{summary['table']}\n")
  with open(os.path.join(workdir, "model_summary.json"), "w") as f:
    json.dump({k: summary[k] for k in ("params", "flops_per_image")}, f)


def write_run_info(config, workdir: str, dataset: Dataset, state) -> None:
  """config.json, dataset.json (`checks.DatasetSummary`) and the model summary
  (replica 0's variables) of a run starting to train."""
  atomic.write_atomically(os.path.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))
  data = dataset.summary or checks.summarize(dataset, dataset.name)
  atomic.write_atomically(os.path.join(workdir, "dataset.json"),
                         json.dumps(data.to_json(), indent=1))
  first = steps.replica(state, 0)
  summary = model_summary(
      states.create_model(config, dataset.num_classes, axis_name=None),
      {"params": first.params, "batch_stats": first.batch_stats}, dataset.image_shape)
  write_model_summary(
      workdir, summary, f"model: {config.model.to_dict()}\nclasses: {dataset.num_classes}")
  logging.info("%s + %s: %s parameters, %.1f MFLOPs per image", config.model.arch,
               config.model.attention, f"{summary['params']:,}", summary["flops_per_image"] / 1e6)
