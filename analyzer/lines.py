"""Read physical lines from files or stdin as bytes, in blocks, whatever the bytes are."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from analyzer.errors import InputError

READ_SIZE = 1 << 22
MAX_DOCUMENT = 1 << 28  # a pretty-printed JSON document larger than this is read as lines


def iter_blocks(stream: BinaryIO, read_size: int = READ_SIZE) -> Iterator[list[bytes]]:
    """Blocks of complete lines without their line endings (``\\n`` or ``\\r\\n``).

    A line longer than ``read_size`` is carried over until it is complete, so megabyte lines are whole.
    An input that is one pretty-printed JSON document (``kubectl get events -o json``) is one block: one
    compact line per item of a List, else the document as one line.
    """
    first = stream.read(read_size)
    rest = b""
    if _pretty_json(first):
        document, rest = _document(stream, first, read_size)
        if document is not None:
            yield document
            return
        first = b""
    chunk = rest + first if rest else first
    rest = b""
    while chunk:
        data = rest + chunk if rest else chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            yield [line[:-1] if line.endswith(b"\r") else line for line in lines]
        chunk = stream.read(read_size)
    if rest:
        yield [rest[:-1] if rest.endswith(b"\r") else rest]


def _pretty_json(head: bytes) -> bool:
    """Whether the input starts like a pretty-printed JSON document: its first line is a lone ``{``."""
    start = head.lstrip()
    end = start.find(b"\n")
    return end > 0 and start[:end].rstrip() == b"{"


def _document(stream: BinaryIO, head: bytes, read_size: int) -> tuple[list[bytes] | None, bytes]:
    """The document's records, or None (and every byte read so far) when it is not one JSON document."""
    parts = [head]
    size = len(head)
    while size <= MAX_DOCUMENT and (chunk := stream.read(read_size)):
        parts.append(chunk)
        size += len(chunk)
    data = b"".join(parts)
    if size > MAX_DOCUMENT:
        return None, data
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, data
    if type(doc) is not dict:
        return None, data
    items = doc.get("items")
    if type(items) is list:  # a List (kubectl get ... -o json): its items are the records
        return [orjson.dumps(item) for item in items], b""
    return [orjson.dumps(doc)], b""


def open_input(name: str) -> BinaryIO:
    """``-`` is stdin; anything else a file. Raises InputError with a one-line reason."""
    if name == "-":
        return sys.stdin.buffer
    try:
        return Path(name).open("rb")
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror or exc}") from None
