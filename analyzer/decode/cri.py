"""CRI container log lines (containerd, CRI-O) and the `kubectl logs --timestamps` prefix."""

from __future__ import annotations

import re

from analyzer.decode.fields import level_word

# RFC3339(Nano) with Z or an offset, as containerd (Z) and CRI-O (local offset) write it.
_RUNTIME_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)")
STDOUT = "stdout"
STDERR = "stderr"
_STREAMS = {b"stdout": STDOUT, b"stderr": STDERR}

CriLine = tuple[bytes, str, bool, bytes]  # (time, stream, partial, message)


def split_cri(raw: bytes) -> CriLine | None:
    """``<time> <stdout|stderr> <tag> <message>``; None if ``raw`` does not have that shape.

    The tag is ``P`` (partial: the runtime split a long line) or ``F`` (full/final), possibly followed by
    more ``:``-separated flags in future runtimes.
    """
    sp = raw.find(b" ", 19, 40)
    if sp < 0:
        return None
    stream = _STREAMS.get(raw[sp + 1 : sp + 7])
    if stream is None or raw[sp + 7 : sp + 8] != b" ":
        return None
    tag_start = sp + 8
    tag_end = raw.find(b" ", tag_start)
    if tag_end < 0:
        tag_end = len(raw)
    if tag_end == tag_start or _RUNTIME_TIME.fullmatch(raw, 0, sp) is None:
        return None
    partial = raw[tag_start] == 80 and (tag_end == tag_start + 1 or raw[tag_start + 1] == 58)  # "P", "P:"
    return raw[:sp], stream, partial, raw[tag_end + 1 :]


def split_timestamp_prefix(raw: bytes) -> tuple[bytes, bytes] | None:
    """``<RFC3339Nano> <line>`` as `kubectl logs --timestamps` prints it: (time, line), else None.

    A zap line pasted with one space after its time (``<time> info ...``) is not such a prefix: a level
    word right after the time means the time belongs to the line.
    """
    sp = raw.find(b" ", 19, 40)
    if sp < 0 or sp + 1 >= len(raw) or raw[sp + 1] in b" \t" or _RUNTIME_TIME.fullmatch(raw, 0, sp) is None:
        return None
    if level_word(raw, sp + 1):
        return None
    return raw[:sp], raw[sp + 1 :]


class PartialLines:
    """CRI ``P`` chunks per stream, joined when the stream's ``F`` chunk arrives."""

    __slots__ = ("_max", "_pending")

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        # stream -> [chunks, total size, time of the first chunk]; chunks is None once over max_bytes
        self._pending: dict[str, tuple[list[bytes] | None, int, bytes]] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, stream: str, chunk: bytes, time: bytes) -> None:
        entry = self._pending.get(stream)
        if entry is None:
            entry = ([], 0, time)
        chunks, size, first = entry
        size += len(chunk)
        if chunks is not None:
            if size > self._max:
                chunks = None  # drop what we hold; the F chunk will report the line as too large
            else:
                chunks.append(chunk)
        self._pending[stream] = (chunks, size, first)

    def finish(self, stream: str, chunk: bytes, time: bytes) -> tuple[bytes, bytes] | int:
        """The joined line and the time of its first chunk; or the joined size if over max_bytes."""
        entry = self._pending.pop(stream, None)
        if entry is None:
            return chunk, time
        chunks, size, first = entry
        size += len(chunk)
        if chunks is None or size > self._max:
            return size
        chunks.append(chunk)
        return b"".join(chunks), first

    def drain(self) -> list[tuple[str, bytes, bytes]]:
        """(stream, joined line, first time) of every stream still waiting for its F chunk; forgets them."""
        out = [(stream, b"".join(chunks), first) for stream, (chunks, _, first) in self._pending.items() if chunks]
        self._pending.clear()
        return out
