"""Tar archives read whole, or refused: never a silently shorter archive.

    contents = tar_archives.read_whole("images.tar.gz")   # {member name: bytes}
    members = tar_archives.member_index("images.tar")     # {member name: (offset, size)}

Python's tarfile stops without a word at a damaged member header after the
first member, and at a missing end-of-archive marker (a tar cut at a member
boundary), and a compressed stream's checksum (gzip's CRC-32) is only
checked when the stream is read to its end. `read_whole` reads every member
and then the rest of the stream, and raises `DatasetError` naming the archive
unless it is whole. Image-folder archives (`image_folders`) and the official
CIFAR archives (`cifar_archives`) are read through it. `member_index` checks
an uncompressed archive alike and gives where each member's bytes lie, for
the stream pipeline's random access (`stream_sources`).
"""

from __future__ import annotations

import lzma
import posixpath
import tarfile
import zlib

from wacnn_jax.data.dataset import DatasetError

# What tarfile, gzip, bz2 and lzma raise for a damaged archive.
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def read_whole(path: str) -> dict[str, bytes | str]:
  """{member name: its bytes, or why it cannot be read} of every file of a tar archive.

  The archive is read to its end and refused (DatasetError) unless it is
  whole: tarfile silently stops at a damaged member header after the first
  one, and at a missing end-of-archive marker (a tar cut at a member
  boundary), and a compressed stream's checksum (gzip's CRC-32) is only
  checked when it is read to its end. Hard and symbolic links to members
  are read as the member.
  """
  contents = {}
  try:
    with tarfile.open(path) as archive:
      for member in archive:
        if member.isfile() or member.islnk() or member.issym():
          try:
            contents[member.name] = archive.extractfile(member).read()
          except KeyError:  # a link to a file the archive does not hold
            contents[member.name] = f"a link to {member.linkname!r}, which is not in the archive"
      _check_end(archive)
  except (DatasetError, *ARCHIVE_ERRORS) as e:
    reason = str(e) if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
    raise DatasetError(f"archive {path} cannot be read whole ({reason}); copy or download "
                       "it again (gzip -t checks a .tar.gz).") from e
  return contents


def member_index(path: str) -> dict[str, tuple[int, int] | str]:
  """{member name: (byte offset, size) of its data, or why it cannot be read} of every file
  of an uncompressed tar archive, checked whole as `read_whole` checks it (DatasetError
  naming the archive otherwise). Links to members point at their target's bytes."""
  index, links = {}, {}
  try:
    with tarfile.open(path, "r:") as archive:
      for member in archive:
        if member.isfile():
          index[member.name] = (member.offset_data, member.size)
        elif member.islnk():
          links[member.name] = member.linkname
        elif member.issym():
          links[member.name] = posixpath.normpath(
              posixpath.join(posixpath.dirname(member.name), member.linkname))
      _check_end(archive)
  except (DatasetError, *ARCHIVE_ERRORS) as e:
    reason = str(e) if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
    raise DatasetError(f"archive {path} cannot be read whole ({reason}); copy or download "
                       "it again.") from e
  for name, target in links.items():
    index[name] = index.get(target, f"a link to {target!r}, which is not in the archive")
  return index


def _check_end(archive: tarfile.TarFile) -> None:
  """Reads `archive` (after its last member) to the end; DatasetError unless it ends whole.

  After the last member comes an end-of-archive marker (zero blocks) and
  zero padding; anything else is a damaged member header, a second archive
  appended to the first (tar reads only the first), or missing.
  """
  stream = archive.fileobj
  stream.seek(archive.offset)
  block = stream.read(tarfile.BLOCKSIZE)
  where = f"at byte {archive.offset} of the tar stream"
  if len(block) < tarfile.BLOCKSIZE:
    raise DatasetError(f"it ends without an end-of-archive marker ({where}, after "
                       f"{len(archive.getmembers())} members): it was cut short")
  if block.count(0) != tarfile.BLOCKSIZE:
    raise DatasetError(f"the member header {where} is damaged")
  while chunk := stream.read(1 << 20):  # to the end: decompressors check their checksums there
    if chunk.count(0) != len(chunk):
      raise DatasetError(f"it holds data after its end-of-archive marker ({where}), "
                         "which tar would ignore: another archive appended to it?")
