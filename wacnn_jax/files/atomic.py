"""Files replaced in one step: a temporary file beside the target, fsync, then `os.replace`.

    write_atomically(path, text)          # str, or bytes written as they are
    with atomic_writer(path) as f:        # a binary file object; streamed writes
      np.save(f, array)

A process killed meanwhile leaves the old or the new content, never a
truncated file; its temporary file `.<name>.<random>.tmp` stays behind
(readers never open it). The file keeps its permissions (a new one is 0644,
as a plain `open` would create it).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import BinaryIO, Iterator

TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_writer(path: str, binary: bool = True) -> Iterator[BinaryIO]:
  """A file object whose content replaces `path` in one step when the block ends.

  An exception in the block (or while replacing) removes the temporary file
  and leaves `path` as it was; an OSError without a file name is given `path`'s
  (a full disk).
  """
  directory, name = os.path.split(os.path.abspath(path))
  mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o644
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=TEMPORARY_SUFFIX)
  try:
    os.fchmod(fd, mode)  # mkstemp's 0600 would change the file's permissions
    with os.fdopen(fd, "wb" if binary else "w") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    if isinstance(e, OSError) and e.filename is None:  # name the file (a full disk)
      raise OSError(e.errno, e.strerror, path) from e
    raise


def write_atomically(path: str, text: str | bytes) -> None:
  """Replaces the file `path` by `text` (str, or bytes written as they are) in one step."""
  with atomic_writer(path, binary=isinstance(text, bytes)) as f:
    f.write(text)
