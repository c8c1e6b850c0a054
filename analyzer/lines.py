"""Read physical lines from files or stdin as bytes, in blocks, whatever the bytes are."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from analyzer.errors import InputError

READ_SIZE = 1 << 22


def iter_blocks(stream: BinaryIO, read_size: int = READ_SIZE) -> Iterator[list[bytes]]:
    """Blocks of complete lines without their line endings (``\\n`` or ``\\r\\n``).

    A line longer than ``read_size`` is carried over until it is complete, so megabyte lines are whole.
    """
    rest = b""
    while chunk := stream.read(read_size):
        data = rest + chunk if rest else chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            yield [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if rest:
        yield [rest[:-1] if rest.endswith(b"\r") else rest]


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
