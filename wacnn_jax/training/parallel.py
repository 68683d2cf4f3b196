"""Where the data and the state live: processes, devices and the batch split.

A global batch of `batch_size` images splits over `process_count` processes
(hosts) and each process's local devices; the pmapped functions map over
`Topology.mapped_devices`, every process's devices. Each process feeds its
slice of every global batch (`epoch_indices`) and of the test set
(`shard_eval_data`). Arrays laid out for pmap carry a leading device axis:
(local_devices, ...).
"""

from __future__ import annotations

import dataclasses
import math

from flax import jax_utils
import jax
import ml_collections
import numpy as np

from wacnn_jax.data import batch_plans
from wacnn_jax.data.dataset import Split

# The pmap axis over devices: gradients, metrics and BatchNorm statistics are
# averaged or summed over it.
AXIS_NAME = "batch"


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Joins the multi-process runtime if `config.distributed` (once per process).

  Unset `coordinator_address`, `num_processes` and `process_id` are detected
  by JAX from the environment (SLURM, Open MPI, Cloud TPU). A process that has
  not connected within `initialization_timeout` seconds, or has sent no
  heartbeat for `heartbeat_timeout` seconds, stops every process with an error.
  """
  if not config.distributed or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes,
      process_id=config.process_id,
      initialization_timeout=config.initialization_timeout,
      heartbeat_timeout_seconds=config.heartbeat_timeout)


@dataclasses.dataclass(frozen=True)
class Topology:
  """How a global batch splits over hosts and local devices.

  `devices` are this process's devices. The pmapped functions map over
  `mapped_devices`: with several processes, every process's devices, ordered
  by process and then as on each process, so that global device
  `process_index * local_device_count + i` is this process's `devices[i]`.
  """

  devices: tuple
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def current(cls, devices=None) -> "Topology":
    """The running processes; `devices` (a subset of the local ones) only with one process."""
    if devices is not None and jax.process_count() > 1:
      raise ValueError(
          f"with {jax.process_count()} processes every process maps over all "
          "its local devices; pass devices=None.")
    return cls(tuple(devices or jax.local_devices()), jax.process_index(),
               jax.process_count())

  @property
  def mapped_devices(self) -> tuple:
    if self.process_count == 1:
      return self.devices
    return tuple(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))

  @property
  def loops_in_xla(self) -> bool:
    """Whether to run many steps per dispatch as an XLA loop.

    XLA:CPU runs convolutions inside loop bodies ~20x slower than at top
    level, so on CPU every dispatch is one (unrolled) step or batch; on GPU and
    TPU an epoch is one `lax.scan`.
    """
    return self.devices[0].platform != "cpu"

  @property
  def local_device_count(self) -> int:
    return len(self.devices)

  @property
  def global_device_count(self) -> int:
    return self.local_device_count * self.process_count

  def per_device_batch(self, global_batch: int, what="batch_size") -> int:
    if global_batch <= 0 or global_batch % self.global_device_count:
      raise ValueError(
          f"{what}={global_batch} does not divide by the {self.global_device_count} "
          f"devices ({self.process_count} host(s) x {self.local_device_count}); "
          f"use a multiple of {self.global_device_count}, e.g. "
          f"--config.{what}={max(1, global_batch // self.global_device_count) * self.global_device_count}.")
    return global_batch // self.global_device_count


def epoch_indices(num_examples: int, epoch: int, seed: int, steps: int,
                  topology: Topology, per_device_batch: int) -> np.ndarray:
  """This host's indices for one epoch: int32 (local_devices, steps, per_device_batch).

  One permutation per (seed, epoch), the same on every host; each host takes
  its slice of every global batch. The last partial batch is dropped.
  """
  global_batch = per_device_batch * topology.global_device_count
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order = order[:steps * global_batch].reshape(
      steps, topology.process_count, topology.local_device_count,
      per_device_batch)[:, topology.process_index]
  return np.ascontiguousarray(order.transpose(1, 0, 2).astype(np.int32))


@dataclasses.dataclass(frozen=True)
class EvalData:
  """A split padded to whole batches and sharded over local devices.

  images (devices, nb, b, H, W, C) uint8; labels and mask (devices, nb, b).
  """

  images: jax.Array
  labels: jax.Array
  mask: jax.Array


def shard_eval_data(split: Split, topology: Topology,
                    global_batch: int) -> EvalData:
  """Pads `split` so every example is evaluated exactly once, then shards it.

  The per-device batch is `eval_batch_size(global_batch, topology)`, so any
  eval batch size works with any device count; padded examples have mask 0
  (`batch_plans.eval_layout`).
  """
  indices, mask = batch_plans.eval_layout(
      len(split), eval_batch_size(global_batch, topology), topology.local_device_count,
      topology.process_index, topology.process_count)
  return EvalData(*(put_sharded(array, topology.devices)
                    for array in (split.images[indices], split.labels[indices], mask)))


def eval_batch_size(global_batch: int, topology: Topology) -> int:
  """The per-device evaluation batch: ceil(global_batch / devices)."""
  return max(1, math.ceil(global_batch / topology.global_device_count))


def put_sharded(array: np.ndarray, devices) -> jax.Array:
  """Host array (devices, ...) -> one slice per device, as pmap takes its inputs."""
  mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
  return jax.device_put(array, jax.NamedSharding(mesh, jax.P("devices")))


def replicate_state(tree, topology: Topology):
  """Copies a host pytree to every local device, laid out as pmap outputs are.

  (So that a compiled step sees one input layout from the first call on.)
  """
  return jax.pmap(lambda x: x, devices=topology.mapped_devices)(
      jax_utils.replicate(tree, devices=topology.devices))


def unreplicate(tree):
  """First replica of a pmapped (devices, ...) pytree, fetched to host memory.

  (flax's `jax_utils.unreplicate` keeps the device axis when pmap ran on a
  subset of the local devices.)
  """
  return jax.device_get(jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree))

