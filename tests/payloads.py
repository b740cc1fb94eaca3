"""Hand-built payloads no FlatBuffers builder would write: vectors whose cells all share one entry.

A builder writes each TextEntry and string once per use; a hostile peer can
point any number of vector cells at one entry instead, so a small payload
describes a huge list. ``shared_entries`` writes such a payload for any root
table: scalar fields, and ``[TextEntry]`` fields whose ``count`` cells all
point at one entry ``(name, value)``.
"""

from __future__ import annotations

import struct
import sys
from array import array


def _string(raw: bytes) -> bytes:
    body = struct.pack("<I", len(raw)) + raw + b"\0"
    return body + b"\0" * (-len(body) % 4)


def shared_entries(
    *,
    scalars: dict[int, int],
    vectors: dict[int, int],
    name: bytes = b"x",
    value: bytes | None = b"y",
    size: int | None = None,
) -> bytes:
    """A root table with u32 ``scalars`` (slot -> value) and ``[TextEntry]`` fields (slot ->
    cell count) whose cells all point at one entry; zero-padded to ``size`` bytes if given."""
    slots = {**{s: None for s in vectors}, **{s: v for s, v in scalars.items()}}
    order = sorted(slots)
    nslots = max(order) + 1
    vtable = struct.pack(f"<{2 + nslots}H", 4 + 2 * nslots, 4 + 4 * len(order), *[
        4 + 4 * order.index(s) if s in slots else 0 for s in range(nslots)
    ])  # fmt: skip
    vtable += b"\0" * (-len(vtable) % 4)
    root = 4 + len(vtable)
    vectors_at = root + 4 + 4 * len(order)
    starts = {}
    at = vectors_at
    for slot in sorted(vectors):
        starts[slot] = at
        at += 4 + 4 * vectors[slot]
    # The one entry: its vtable, its table, its strings.
    entry_vt = struct.pack("<4H", 8, 12, 4, 8) if value is not None else struct.pack("<3H", 6, 8, 4) + b"\0\0"
    entry = at + len(entry_vt)
    entry_table = struct.pack("<iI", entry - at, 8 if value is not None else 4)
    name_string = _string(name)
    if value is not None:
        entry_table = struct.pack("<iII", entry - at, 8, 4 + len(name_string))
    strings = name_string + (_string(value) if value is not None else b"")

    cells = []
    for i, slot in enumerate(order):
        cell_at = root + 4 + 4 * i
        cells.append(starts[slot] - cell_at if slot in vectors else slots[slot])
    parts = [struct.pack("<I", root), vtable, struct.pack(f"<i{len(order)}I", root - 4, *cells)]
    for slot in sorted(vectors):
        count = vectors[slot]
        first_cell = starts[slot] + 4
        offsets = array("I", range(entry - first_cell, entry - first_cell - 4 * count, -4))
        if sys.byteorder != "little":
            offsets.byteswap()
        parts += [struct.pack("<I", count), offsets.tobytes()]
    parts += [entry_vt, entry_table, strings]
    payload = b"".join(parts)
    if size is not None:
        if size < len(payload):
            raise ValueError(f"the payload needs {len(payload)} bytes, more than {size}")
        payload += bytes(size - len(payload))
    return payload
