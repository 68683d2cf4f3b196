"""Files the layers above write and read back: replaced in one step, and JSON records read one way.

    atomic    write_atomically(path, text), atomic_writer(path): a kill leaves the old
              or the new file, never a part of one
    records   read_json / read_json_lines (config.json, metrics.jsonl, eval.json, ...),
              RecordError, flat_keys (nested records as dotted keys)

Beside the building blocks at the bottom of wacnn_jax: it imports the
standard library (and absl's logging) only, nothing of wacnn_jax outside
this folder.
"""
