"""Dropping samples from a finished FFCV beton, in place, without rewriting its data.

The converter decodes each image once, inside FFCV's writer processes. A file that turns out unreadable there
cannot be left out (the writer has already given it a slot), so it gets a 1-pixel stand-in, and afterwards this
module removes those slots. A beton (ffcv/writer.py, ffcv/types.py) is: a header (``num_samples``,
``alloc_table_ptr``), the field descriptors, one metadata row per sample, the data pages, and at the end the
allocation table, one ``(sample_id, ptr, size)`` row per stored blob. Removing a sample is deleting its metadata row
and its allocation rows and renumbering the ``sample_id``s after it; the stand-in's few bytes stay in their page,
unreferenced.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def drop_samples(path: Path, drop: list[int]) -> int:
    """Remove samples ``drop`` (indices as written) from the beton at ``path``; returns the samples left."""
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType

    reader = Reader(str(path))
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    keep = np.ones(reader.num_samples, dtype=bool)
    keep[np.asarray(drop, dtype=np.int64)] = False
    new_id = np.cumsum(keep) - 1  # a kept sample's index once the dropped ones are gone

    table = reader.alloc_table
    kept_rows = keep[table["sample_id"]]
    new_table = np.empty(int(kept_rows.sum()), dtype=ALLOC_TABLE_TYPE)
    new_table["sample_id"] = new_id[table["sample_id"][kept_rows]]
    new_table["ptr"], new_table["size"] = table["ptr"][kept_rows], table["size"][kept_rows]

    metadata_start = HeaderType.itemsize + int(header["num_fields"]) * FieldDescType.itemsize
    header["num_samples"] = int(keep.sum())
    with open(path, "r+b") as handle:
        handle.seek(metadata_start)  # the shorter metadata; the rows' old tail is never read again
        handle.write(reader.metadata[keep].tobytes())
        handle.seek(int(header["alloc_table_ptr"]))  # the table stays where it was, only shorter
        handle.write(new_table.tobytes())
        handle.truncate()
        handle.seek(0)
        handle.write(header.tobytes())
    return int(header["num_samples"])
