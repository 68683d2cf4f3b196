"""Writes tests/data/cifar10-mini.tar.gz from the full CIFAR-10 JPEG archive.

    python tests/data/make_cifar10_mini.py [--source ../shared/data/cifar10-jpeg.tar.gz]

The first `TRAIN_PER_CLASS` train and `TEST_PER_CLASS` test images of each
class (in sorted file-name order), under `cifar10-mini/{train,test}/<class>/`,
with the JPEG bytes unchanged. The archive is deterministic: members in sorted
order, fixed owner, mode and mtime, gzip header without name or time.
"""

import argparse
import gzip
import io
import os
import tarfile

TRAIN_PER_CLASS, TEST_PER_CLASS = 52, 26
TOP = "cifar10-mini"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.join(HERE, "..", "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")
DEFAULT_OUT = os.path.join(HERE, "cifar10-mini.tar.gz")


def mini_tar(source: str, train_per_class: int = TRAIN_PER_CLASS,
             test_per_class: int = TEST_PER_CLASS) -> bytes:
  """The uncompressed tar of the first images per class of `source`'s splits."""
  per_split = {"train": train_per_class, "test": test_per_class}
  files = {}
  with tarfile.open(source) as archive:
    for member in archive:
      parts = member.name.split("/")
      if member.isfile() and len(parts) >= 3 and parts[-3] in per_split:
        files[tuple(parts[-3:])] = archive.extractfile(member).read()
  chosen, counts = [], {}
  for split, label, name in sorted(files):
    if counts.get((split, label), 0) < per_split[split]:
      counts[(split, label)] = counts.get((split, label), 0) + 1
      chosen.append((split, label, name))
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for split, label, name in chosen:
      info = tarfile.TarInfo(f"{TOP}/{split}/{label}/{name}")
      info.size, info.mode, info.mtime = len(files[(split, label, name)]), 0o644, 0
      tar.addfile(info, io.BytesIO(files[(split, label, name)]))
  return buffer.getvalue()


def write_mini_archive(source: str, out: str) -> None:
  """Writes `mini_tar(source)` to `out`, gzipped without a name or time stamp."""
  with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
    gz.write(mini_tar(source))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default=DEFAULT_SOURCE, help="the full cifar10-jpeg.tar.gz")
  parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the mini archive")
  args = parser.parse_args()
  write_mini_archive(args.source, args.out)
  print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
  main()
