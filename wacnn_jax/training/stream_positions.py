"""The stream's position as a checkpoint saves it: the next step and the plan it belongs to.

    position = StreamPosition(next_step=300, plan=repr(plan), train_checksum=...)
    position.get_state()    # JSON bytes, as Grain's Orbax handler writes them (one file per
                            # process: process_<i>-of-<n>.json in the checkpoint's `data` item)

`stream_feed.StreamFeed.position()` makes one for each checkpoint of a
streamed run and `check_position` holds a restored one to the restored
state. It imports no Grain, so that the memory pipeline never does.
"""

from __future__ import annotations

import json


class StreamPosition:
  """The stream's position as a checkpoint saves it (Grain's Orbax handler writes one JSON
  file per process): the next step to read and the plan and split it belongs to."""

  def __init__(self, next_step: int = 0, plan: str = "", train_checksum: str = ""):
    self.next_step, self.plan, self.train_checksum = next_step, plan, train_checksum

  def get_state(self) -> bytes:
    return json.dumps({"next_step": self.next_step, "plan": self.plan,
                       "train_checksum": self.train_checksum}).encode()

  def set_state(self, state: bytes) -> None:
    fields = json.loads(state.decode())
    self.next_step, self.plan = fields["next_step"], fields["plan"]
    self.train_checksum = fields["train_checksum"]

  def start_prefetch(self) -> None:
    """(Grain's handler calls it after a restore; the feed starts its workers when asked.)"""
