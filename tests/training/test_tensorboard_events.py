"""TensorBoard event files (`tensorboard_events`), read back with TensorFlow's own reader."""

import json
import os

import numpy as np
import pytest

from wacnn_jax.training import metrics
from wacnn_jax.training import tensorboard_events


tf = pytest.importorskip("tensorflow")


def read_events(path):
  """[(wall_time, step, file_version, [(tag, simple_value), ...])] by TensorFlow's reader,
  which checks every record's CRCs."""
  return [(e.wall_time, e.step, e.file_version,
           [(v.tag, v.simple_value) for v in e.summary.value])
          for e in tf.compat.v1.train.summary_iterator(path)]


@pytest.mark.parametrize("data, crc", [
    (b"123456789", 0xE3069283),      # the CRC catalogue's check value
    (bytes(32), 0x8A9136AA),         # RFC 3720, B.4: 32 bytes of zeros
    (b"\xff" * 32, 0x62A8AB43),      # 32 bytes of ones
    (bytes(range(32)), 0x46DD794E),  # incrementing
    (bytes(range(31, -1, -1)), 0x113FDB5C),  # decrementing
    (b"", 0),
])
def test_crc32c_matches_published_check_values(data, crc):
  assert tensorboard_events.crc32c(data) == crc


def test_tensorflow_reads_back_every_scalar(tmp_path):
  writer = tensorboard_events.ScalarWriter(str(tmp_path))
  scalars = [("epoch/test_accuracy", 0.9375, 1), ("epoch/test_accuracy", 0.25, 160),
             ("train/loss", 2.302585, 0), ("train/loss", 1e-30, 2**40),
             ("train/learning_rate", -3.5, 7), ("x" * 300, float("inf"), 3),
             ("epoch/ünicode", 1.0, 2)]
  for tag, value, step in scalars:
    writer.add_scalar(tag, value, step)
  writer.close()
  events = read_events(writer.path)
  assert events[0][2] == tensorboard_events.FILE_VERSION and events[0][3] == []
  got = [(values[0][0], values[0][1], step) for _, step, _, values in events[1:]]
  assert [(t, s) for t, _, s in got] == [(t, s) for t, _, s in scalars]
  np.testing.assert_array_equal([v for _, v, _ in got],
                                np.float32([v for _, v, _ in scalars]))
  assert all(abs(e[0] - events[0][0]) < 60 for e in events)


def test_a_damaged_record_is_detected_by_tensorflow(tmp_path):
  writer = tensorboard_events.ScalarWriter(str(tmp_path))
  writer.add_scalar("a", 1.0, 1)
  writer.close()
  data = bytearray(open(writer.path, "rb").read())
  data[-6] ^= 0x01  # inside the last record's payload: its CRC no longer matches
  open(writer.path, "wb").write(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    read_events(writer.path)


def test_writers_in_one_folder_never_share_a_file(tmp_path):
  writers = [tensorboard_events.ScalarWriter(str(tmp_path)) for _ in range(3)]
  for k, writer in enumerate(writers):
    writer.add_scalar("k", k, k)
    writer.close()
  assert len(set(os.listdir(tmp_path))) == 3
  for k, writer in enumerate(writers):
    assert read_events(writer.path)[1][3] == [("k", k)]


def test_flush_makes_records_readable_while_the_file_is_open(tmp_path):
  writer = tensorboard_events.ScalarWriter(str(tmp_path))
  writer.add_scalar("a", 0.5, 3)
  writer.flush()
  assert read_events(writer.path)[1][1:] == (3, "", [("a", 0.5)])
  writer.close()


def test_metrics_log_writes_each_epoch_field_per_replica(tmp_path):
  records = [[{"epoch": e, "replica": k, "seed": k, "test_accuracy": 0.5 + 0.125 * k + e / 64,
               "train_loss": 2.0 - e / 8, "note": "not a number"} for k in range(2)]
             for e in (1, 2)]
  with metrics.MetricsLog(str(tmp_path), enabled=True, num_replicas=2) as log:
    for epoch_records in records:
      log.write_epoch(epoch_records)
    log.write_steps(0, np.float32([[4.0, 3.0], [5.0, 6.0]]), np.float32([0.1, 0.2]), every=2)
  for k in range(2):
    folder = tmp_path / "tensorboard" / f"replica{k}"
    (name,) = os.listdir(folder)
    scalars = {(values[0][0], step): values[0][1]
               for _, step, _, values in read_events(str(folder / name)) if values}
    expected = {(f"epoch/{key}", r[k]["epoch"]): np.float32(r[k][key])
                for r in records for key in ("test_accuracy", "train_loss")}
    expected[("train/loss", 2)] = np.float32([3.0, 6.0][k])
    expected[("train/learning_rate", 2)] = np.float32(0.2)
    assert scalars == expected
  assert [json.loads(l)["replica"] for l in open(tmp_path / "metrics.jsonl")] == [0, 1, 0, 1]
