"""Cross-replica equivalence on 8 host devices (in a subprocess, so that the
XLA flag that makes 8 CPU devices applies)."""

import subprocess
import sys
import textwrap

from tests.helpers import REPO_ROOT

SCRIPT = textwrap.dedent(r"""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from flax import jax_utils
    from configs import cifar
    from wacnn_jax.data import dataset
    from wacnn_jax.data import normalization
    from wacnn_jax.data import transforms
    from wacnn_jax.training import optim
    from wacnn_jax.training import parallel
    from wacnn_jax.training import states
    from wacnn_jax.training import steps

    assert jax.local_device_count() == 8, jax.devices()
    config = cifar.get_config("smoke")
    # No augmentation: the same images on both sides.
    preprocessing = transforms.Preprocessing((32, 32), normalization.CIFAR, "none")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (64,), dtype=np.int32)
    global_batch = 16

    def one_step(devices, seed, num_seeds):
        config.seed, config.num_seeds = seed, num_seeds
        topology = parallel.Topology.current(devices)
        per_device = topology.per_device_batch(global_batch)
        model = states.create_model(config, 10)
        lr = optim.create_learning_rate_fn(config, 4)
        state = states.create_train_states(config, model, (32, 32, 3), lr)
        p_train = steps.make_train_fn(config, preprocessing, lr, topology)
        indices = np.broadcast_to(  # (devices, R, steps, b): the same batch for every replica
            np.arange(global_batch, dtype=np.int32).reshape(len(devices), 1, 1, per_device),
            (len(devices), num_seeds, 1, per_device))
        after, metrics = p_train(jax_utils.replicate(state, devices=devices),
                                 images[indices], labels[indices])
        return state, parallel.unreplicate(after), jax.device_get(metrics)

    # Replica 1 (seed 1) of two on 8 devices is the single-seed run of seed 1 on one
    # device: the cross-device means inside the vmap over replicas stay per replica.
    _, multi, multi_metrics = one_step(jax.local_devices(), 0, 2)
    start, single, single_metrics = one_step(jax.local_devices()[:1], 1, 1)
    for name in ("params", "batch_stats"):
        a = jax.tree.leaves(steps.replica(getattr(multi, name), 1))
        b = jax.tree.leaves(steps.replica(getattr(single, name), 0))
        b_start = jax.tree.leaves(steps.replica(getattr(start, name), 0))
        assert len(a) == len(b) == len(b_start) > 0
        # The vmapped (grouped) convolutions sum in another order. Where that
        # rounding moves a ReLU's input across zero, the gradient of every layer
        # before it changes a little: measured up to 2e-3 (JAX 0.10.2) and 7e-3
        # (JAX 0.12.1) of a variable's update in norm, a few elements by up to
        # 2.6e-4. Replicas mixed by a cross-device mean would differ by the
        # order of the update itself.
        for x, y, y_start in zip(a, b, b_start):
            update = np.linalg.norm(np.asarray(y) - np.asarray(y_start))
            assert np.linalg.norm(np.asarray(x) - np.asarray(y)) <= 0.02 * update + 1e-6
    # Replicas agree with each other after the step (synchronised BN statistics).
    np.testing.assert_allclose(multi_metrics["loss_sum"][0, 1], single_metrics["loss_sum"][0, 0],
                               rtol=1e-4)
    assert not np.allclose(multi_metrics["loss_sum"][0, 0], multi_metrics["loss_sum"][0, 1])
    assert int(multi_metrics["count"][0, 1, 0]) == global_batch

    # Evaluation over 8 devices counts every example exactly once.
    topology = parallel.Topology.current()
    split = dataset.Split(images[:37], labels[:37])
    data = parallel.shard_eval_data(split, topology, 12)
    totals = steps.make_eval_fn(config, 10, normalization.CIFAR, topology)(
        jax_utils.replicate(multi), data)
    results = steps.summarize_eval(parallel.unreplicate(totals))
    assert [r["count"] for r in results] == [37, 37], results
    print("CROSS_REPLICA_OK")
""")


def test_pmapped_step_on_8_devices_equals_single_device_step():
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert "CROSS_REPLICA_OK" in result.stdout, result.stderr[-4000:]
