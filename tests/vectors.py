"""Byte-level examples of the protocol's messages, as whole frames (header included).

The bytes are data, kept in ``vectors.txt`` next to this file: a line
``= name``, then the frame in hex. Built with the Python FlatBuffers builder;
APISIX's Lua builder lays bytes out differently, so tests compare decoded
fields, never payload bytes, except where a vector is the input.
"""

from __future__ import annotations

from pathlib import Path


def _read(path: Path) -> dict[str, bytes]:
    vectors: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in path.read_text(encoding="ascii").splitlines():
        if line.startswith("= "):
            lines = vectors.setdefault(line[2:].strip(), [])
        elif line.strip() and not line.startswith("#"):
            lines.append(line)
    return {name: bytes.fromhex(" ".join(hex_lines)) for name, hex_lines in vectors.items()}


VECTORS = _read(Path(__file__).with_name("vectors.txt"))


def payload(name: str) -> bytes:
    """The vector's FlatBuffer, without its 4-byte frame header."""
    return VECTORS[name][4:]
