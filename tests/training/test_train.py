"""The training system: optimiser, schedule, batching, evaluation, checkpoints, resume."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from tests.helpers import copy_run
from tests.helpers import smoke_run_config as smoke_config
from wacnn_jax.data.dataset import Split
from wacnn_jax.data import pipeline
from wacnn_jax.data import transforms
from wacnn_jax.training import checkpointing
from wacnn_jax.training import config_checks
from wacnn_jax.training import optim
from wacnn_jax.training import parallel
from wacnn_jax.training import run_identity
from wacnn_jax.training import states
from wacnn_jax.training import status
from wacnn_jax.training import steps
from wacnn_jax.training import train








# ---------------------------------------------------------------------------
# Optimiser and schedule.
# ---------------------------------------------------------------------------


def test_sgd_matches_pytorch_formula():
  """torch.optim.SGD(lr, momentum, weight_decay), dampening 0, written out in numpy."""
  config = cifar.get_config("smoke")
  lr, momentum, wd = 0.1, config.optimizer.momentum, config.optimizer.weight_decay
  tx = optim.create_optimizer(config, lambda step: lr)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32)}
  opt_state = tx.init(params)
  expected = {k: v.astype(np.float64) for k, v in params.items()}
  buffers = {k: None for k in params}
  for _ in range(4):
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for k in expected:
      d_p = grads[k] + wd * expected[k]
      buffers[k] = d_p if buffers[k] is None else momentum * buffers[k] + d_p
      expected[k] = expected[k] - lr * buffers[k]
  for k in expected:
    np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-6)


def test_step_schedule_follows_the_reference_epochs():
  config = cifar.get_config("smoke")
  config.schedule.name = "step"
  config.schedule.boundaries = (81, 121)
  config.num_epochs = 160
  spe = 7
  lr = optim.create_learning_rate_fn(config, spe)
  at_epoch = lambda e, offset=0: float(lr(jnp.asarray(e * spe + offset)))
  assert at_epoch(0) == pytest.approx(0.1)
  assert at_epoch(80, spe - 1) == pytest.approx(0.1)  # last step of epoch 80
  assert at_epoch(81) == pytest.approx(0.01)
  assert at_epoch(120, spe - 1) == pytest.approx(0.01)
  assert at_epoch(121) == pytest.approx(0.001)
  assert at_epoch(159) == pytest.approx(0.001)
  config.schedule.warmup_epochs = 1
  lr = optim.create_learning_rate_fn(config, spe)
  assert float(lr(jnp.asarray(spe - 1))) == pytest.approx(0.01)
  assert float(lr(jnp.asarray(spe))) == pytest.approx(0.1)


def test_cosine_schedule():
  config = cifar.get_config("smoke")
  config.schedule.name = "cosine"
  config.num_epochs = 10
  lr = optim.create_learning_rate_fn(config, 4)
  assert float(lr(0)) == pytest.approx(0.1)
  assert float(lr(20)) == pytest.approx(0.05, rel=1e-5)
  assert float(lr(40)) == pytest.approx(0.0, abs=1e-7)
  config.schedule.name = "linear"
  with pytest.raises(ValueError, match="step.*cosine"):
    optim.create_learning_rate_fn(config, 4)


# ---------------------------------------------------------------------------
# Batching over devices and hosts.
# ---------------------------------------------------------------------------


def test_batch_size_must_divide_by_devices():
  cpu = jax.devices()[0]
  topology = parallel.Topology(devices=(cpu,) * 3)  # arithmetic only
  assert topology.per_device_batch(96) == 32
  with pytest.raises(ValueError, match="does not divide by the 3 devices.*batch_size=99"):
    topology.per_device_batch(100)


def test_epoch_indices_partition_the_epoch_across_hosts():
  cpu = jax.devices()[0]
  n, steps, per_device = 103, 4, 3
  hosts = [parallel.Topology(devices=(cpu, cpu), process_index=i, process_count=2)
           for i in range(2)]
  parts = [parallel.epoch_indices(n, 5, 0, steps, t, per_device) for t in hosts]
  assert parts[0].shape == (2, steps, per_device) and parts[0].dtype == np.int32
  # Global batch of step s = host 0's devices then host 1's: no index repeats.
  everything = np.concatenate([p.transpose(1, 0, 2).reshape(steps, -1) for p in parts], 1)
  assert len(np.unique(everything)) == steps * 12 and everything.max() < n
  again = parallel.epoch_indices(n, 5, 0, steps, hosts[0], per_device)
  np.testing.assert_array_equal(parts[0], again)
  other_epoch = parallel.epoch_indices(n, 6, 0, steps, hosts[0], per_device)
  assert not np.array_equal(parts[0], other_epoch)


@pytest.mark.parametrize("n, batch", [(10, 4), (37, 8), (5, 100)])
def test_eval_data_covers_every_example_once(n, batch):
  rng = np.random.default_rng(n)
  split = Split(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
                               np.arange(n, dtype=np.int32))
  data = parallel.shard_eval_data(split, parallel.Topology.current(), batch)
  mask = np.asarray(data.mask).reshape(-1)
  labels = np.asarray(data.labels).reshape(-1)
  assert mask.sum() == n
  np.testing.assert_array_equal(np.sort(labels[mask]), np.arange(n))


# ---------------------------------------------------------------------------
# End-to-end on real images.
# ---------------------------------------------------------------------------


def test_smoke_run_writes_its_outputs(smoke_wa_run):
  config, workdir, state = smoke_wa_run.config, smoke_wa_run.workdir, smoke_wa_run.state
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in records] == [1, 2]
  assert all(r["test_examples"] == config.data.max_test_examples for r in records)
  assert records[1]["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
  assert [(r["replica"], r["seed"]) for r in records] == [(0, 0), (0, 0)]
  # The process's age at its first epoch, once; this test's process started before the run.
  assert 0 < records[0]["startup_seconds"] < status.process_seconds()
  assert records[1]["startup_seconds"] == 0 and records[1]["compile_seconds"] == 0
  # num_seeds=1: the state has a replica axis of 1.
  assert state.step.tolist() == [2 * (config.data.max_train_examples // config.batch_size)]
  summary = open(os.path.join(workdir, "model_summary.txt")).read()
  params = sum(x.size for x in jax.tree.leaves(steps.replica(state.params, 0)))
  assert f"parameters: {params:,}" in summary and "FLOPs per image" in summary
  assert os.listdir(os.path.join(workdir, "tensorboard", "replica0"))
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["arch"] == "resnet18"


def test_evaluation_agrees_with_a_direct_forward_pass(smoke_wa_run):
  config, state = smoke_wa_run.config, smoke_wa_run.state
  dataset = pipeline.load(config.data)
  topology = parallel.Topology.current()
  data = parallel.shard_eval_data(dataset.test, topology, 48)  # 256 = 5 batches + 16
  p_eval = steps.make_eval_fn(config, dataset.num_classes, dataset.preprocessing.normalization,
                               topology)
  from flax import jax_utils
  totals = p_eval(jax_utils.replicate(state), data)
  [result] = steps.summarize_eval(parallel.unreplicate(totals))
  model = states.create_model(config, dataset.num_classes, axis_name=None)
  state = steps.replica(state, 0)
  logits = np.asarray(model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      transforms.normalize(jnp.asarray(dataset.test.images),
                           dataset.preprocessing.normalization), train=False))
  predictions = logits.argmax(-1)
  assert result["count"] == len(dataset.test)
  assert result["accuracy"] == pytest.approx((predictions == dataset.test.labels).mean())
  log_probs = jax.nn.log_softmax(logits)
  loss = -log_probs[np.arange(len(logits)), dataset.test.labels].mean()
  assert result["loss"] == pytest.approx(float(loss), rel=1e-4)
  confusion = np.zeros((10, 10), int)
  np.add.at(confusion, (dataset.test.labels, predictions), 1)
  np.testing.assert_array_equal(result["confusion"], confusion)


def test_checkpoint_of_another_model_is_refused(smoke_wa_run, cifar10_mini, tmp_path):
  run = copy_run(smoke_wa_run, tmp_path / "run")
  config = smoke_config(cifar10_mini, **{"model.attention": "none"})
  with pytest.raises(checkpointing.CheckpointError, match="another model.*model.attention"):
    train.train_and_evaluate(config, run.workdir)


@pytest.mark.parametrize("spelling, canonical", [
    ("wa", "wa"), ("wad", "wa"), ("wa(wavelet='haar', stages='reference')", "wa"),
    ("wad(stages='all')", "wa(stages='all')"), ("se( reduction = 8 )", "se(reduction=8)"),
])
def test_checkpoint_identity_records_the_canonical_attention_spec(spelling, canonical):
  """Spellings of one model restore each other's checkpoints; other models are refused."""
  config = cifar.get_config("smoke")
  config.model.attention = spelling
  dataset = types.SimpleNamespace(num_classes=10, class_names=[str(k) for k in range(10)],
                                  image_shape=(32, 32, 3))
  identity = run_identity.checkpoint_identity(config, dataset)
  assert identity["model.attention"] == canonical
  assert {k for k in identity if k.startswith("model.")} == {
      "model.arch", "model.attention", "model.block"}


@pytest.mark.parametrize("field, value, message", [
    ("attention", "se(kernel_size=3)", "se has no option 'kernel_size'"),
    ("attention", "cbam(reduction=0)", "cbam option reduction=0 is invalid"),
    ("arch", "resnet19", "unknown arch 'resnet19'"),
    ("block", "bottleneck", "resnet18 has no bottleneck version"),
])
def test_validate_config_checks_the_model_section(field, value, message):
  config = cifar.get_config("smoke")
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    config_checks.validate_config(config)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_tfds_mock_data_through_the_full_pipeline(name, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = cifar.get_config("smoke")
  config.data.dataset = name
  config.data.max_train_examples = config.data.max_test_examples = 0
  config.data.allow_missing_classes = True  # mock_data's random labels miss some classes
  config.num_epochs = 1
  config.batch_size = 32
  with tfds.testing.mock_data(num_examples=96):
    state = train.train_and_evaluate(config, str(tmp_path))
  record = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert record["test_examples"] == 96 and state.step.tolist() == [3]
  assert state.params["classifier"]["kernel"].shape[-1] == (10 if name == "cifar10" else 100)


def test_learns_on_real_cifar10(cifar10_mini, tmp_path):
  """ResNet18+WA on 520 real CIFAR-10 images, 12 epochs: clearly above chance (10 %).

  Best test accuracy on the 260 test images measured 0.37 (seed 0; seeds 1 and
  2: 0.36, 0.29); chance gives 0.10 +- 0.02.
  """
  config = smoke_config(cifar10_mini, num_epochs=12, batch_size=64,
                        **{"data.max_train_examples": 0, "data.max_test_examples": 0,
                           "schedule.boundaries": (11,), "optimizer.learning_rate": 0.05})
  train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  print("real-data accuracy per epoch:", [round(r["test_accuracy"], 3) for r in records],
        "images/s:", [round(r["images_per_sec"]) for r in records])
  assert records[-1]["test_examples"] == 260
  assert records[-1]["best_test_accuracy"] > 0.25
  assert records[-1]["train_loss"] < records[0]["train_loss"]
