"""TensorBoard event files of scalars, written with the standard library only.

    writer = tensorboard_events.ScalarWriter("workdir/tensorboard/replica0")
    writer.add_scalar("epoch/test_accuracy", 0.93, step=160)
    writer.flush(); writer.close()

An event file is what TensorBoard (and `tf.compat.v1.train.summary_iterator`)
reads: a sequence of TFRecords, each

    uint64 length (little-endian) | uint32 masked CRC-32C of the length |
    payload | uint32 masked CRC-32C of the payload,

whose payloads are `Event` protocol buffers (tensorflow/core/util/event.proto):
the first names the format ("brain.Event:2"), every other one holds a
`Summary` with one `simple_value` scalar under a tag at a step. Only those
fields are encoded here, by hand, so that a training run does not import a
TensorBoard writer library (tensorboardX imports PyTorch whenever it is
installed: a second of every run's start on a CPU, more for a CUDA build).

Files are named as TensorFlow names them, `events.out.tfevents.<seconds>.
<host>.<pid>.<n>`, and never overwritten: a resumed run adds a file to the
same folder and TensorBoard reads them in order.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

FILE_VERSION = "brain.Event:2"


def _crc32c_table() -> tuple[int, ...]:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one entry per byte value."""
  table = []
  for crc in range(256):
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """The CRC-32C of `data` (RFC 3720's check value: crc32c(b"123456789") = 0xE3069283)."""
  crc = 0xFFFFFFFF
  table = _CRC32C_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotated right by 15 bits plus 0xA282EAD8, modulo 2**32."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the payload, its masked CRC."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc32c(length)) + payload
          + struct.pack("<I", masked_crc32c(payload)))


def _varint(value: int) -> bytes:
  """Protocol-buffer base-128 varint; a negative int64 as its 64-bit two's complement."""
  value &= 0xFFFFFFFFFFFFFFFF
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(data)) + data


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          tag: str | None = None, simple_value: float | None = None) -> bytes:
  """An `Event` message: wall_time (1, double), step (2, int64) and either file_version
  (3, string) or summary (5) = Summary{value (1) = Value{tag (1), simple_value (2, float)}}."""
  message = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    message += _length_delimited(3, file_version.encode())
  if tag is not None:
    value = _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", simple_value)
    message += _length_delimited(5, _length_delimited(1, value))
  return message


class ScalarWriter:
  """Appends scalars to a new event file in `logdir` (created if missing).

  Records are buffered by the file; `flush` makes them visible to TensorBoard.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    prefix = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    for number in itertools.count():  # a new file, whatever is there already
      self.path = os.path.join(logdir, f"{prefix}.{number}.v2")
      try:
        self._file = open(self.path, "xb")
        break
      except FileExistsError:
        pass
    self._file.write(tfrecord(event(time.time(), file_version=FILE_VERSION)))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    """Scalar `value` under `tag` at `step`, stamped with the current time."""
    self._file.write(tfrecord(event(time.time(), int(step), tag=tag,
                                    simple_value=float(value))))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()
