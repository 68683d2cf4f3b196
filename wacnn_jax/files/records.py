"""The JSON files a run writes and the tools read back, read one way.

    records.read_json_lines(path)        # metrics.jsonl: [record, ...]
    records.read_json(path)              # config.json: the document
    records.read_json(path, default=x)   # eval.json, reproduce.json, ...: x if unreadable
    records.flat_keys(config.to_dict())  # {"model.arch": "resnet18", ...}

A process killed while appending to `metrics.jsonl` leaves its last line cut
short: `read_json_lines` drops that line with a warning (training writes the
file anew when it resumes). Every other
problem is a `RecordError` naming the file and what is wrong with it, or, for
a file the caller can do without (`default` given), a warning naming it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from absl import logging

_NO_DEFAULT = object()


class RecordError(ValueError):
  """A record file that cannot be read; the message names it."""


def read_json_lines(path: str) -> list[dict]:
  """The records of a JSON-lines file, one per non-blank line; [] if it does not exist.

  A last line that is not JSON (cut short by a crash) is dropped with a
  warning; any other line that is not a JSON object is a RecordError.
  """
  if not os.path.exists(path):
    return []
  lines = _read_text(path).splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  result = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):
        logging.warning("%s: dropped its last line, which was cut short (%d characters; "
                        "written by a process that stopped while writing it).",
                        path, len(line))
        break
      raise RecordError(f"{path} line {number} is not JSON ({e.msg}); the file is "
                        "damaged: delete or repair that line.") from e
    if not isinstance(record, dict):
      raise RecordError(f"{path} line {number} is not a JSON object; the file is damaged.")
    result.append(record)
  return result


def read_json(path: str, default: Any = _NO_DEFAULT) -> Any:
  """The JSON document in `path`.

  Without `default`: RecordError when the file is missing, cut short or not
  JSON. With it: `default` when the file is missing, and with a warning when
  it cannot be read.
  """
  try:
    if not os.path.exists(path):
      if default is not _NO_DEFAULT:
        return default
      raise RecordError(f"{path} does not exist.")
    text = _read_text(path)
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      body = text.strip()
      state = ("is empty" if not body else
               "is cut short" if body[0] in "{[" and body[-1] not in "}]" else "is not JSON")
      raise RecordError(f"{path} {state} (line {e.lineno}: {e.msg}); it was damaged or "
                        "written only in part.") from e
  except RecordError as e:
    if default is _NO_DEFAULT:
      raise
    logging.warning("%s Going on without it.", e)
    return default


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise RecordError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                      "the file is damaged.") from e
  except OSError as e:
    raise RecordError(f"cannot read {path} ({e.strerror or e}).") from e


def flat_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted key: value} of a nested mapping, e.g. {"model.arch": "resnet18"}, in its order.

  Values are as JSON gives them back (tuples become lists), so that a config
  and the config.json it was saved as flatten alike.
  """
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flat_keys(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return flat
