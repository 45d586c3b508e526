"""Reading JSON out of benchmark outputs in bounded memory and time.

* `loads`: one JSON text (at most `limits.MAX_OBJECT_CHARS`), refused when nested deeper than
  `limits.MAX_JSON_DEPTH` (checked before decoding: the decoder recurses), with over-long numbers
  kept as `limits.HugeNumber` instead of converted (Python's `int()` refuses 5,000 digits);
* `Lines`: a text stream's lines, each at most `MAX_OBJECT_CHARS` long (a longer one is reported
  as None and skipped without being held), with one line of push-back;
* `read_output_file`: an `--output_file` (a JSON list of result objects, or
  `{"benchmark_metadata": {...}, "results": [...]}`, pretty-printed or not) read in chunks: each
  top-level item is cut out by a scanner that follows only brackets and strings, then decoded
  alone, so a truncated, malformed, oversized or too deeply nested item costs only itself (or,
  for a truncation, what follows it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

from moecomm_tasks.limits import MAX_JSON_DEPTH, MAX_OBJECT_CHARS, Invalid, bounded_number

CHUNK_CHARS = 1 << 20
_STRUCTURE = re.compile(r'["\[\]{}]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_SCALAR = re.compile(r'[^\s,\]}]*')
_WHITESPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder(parse_int=bounded_number, parse_float=bounded_number)


def nesting_depth(text: str, stop_above: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of brackets outside strings (stops counting once above `stop_above`)."""
    if text.count("{") + text.count("[") <= stop_above:
        return 0
    depth = deepest = 0
    pos = 0
    while (match := _STRUCTURE.search(text, pos)) is not None:
        char = match.group()
        pos = match.end()
        if char == '"':
            rest = _STRING_REST.match(text, pos)
            if rest is None:
                break
            pos = rest.end()
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def loads(text: str) -> Any:
    """Decode one JSON text; raises `limits.Invalid` with the reason when it cannot be."""
    if len(text) > MAX_OBJECT_CHARS:
        raise Invalid(f"a JSON object of {len(text)} characters (more than {MAX_OBJECT_CHARS})")
    if nesting_depth(text) > MAX_JSON_DEPTH:
        raise Invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"malformed JSON object: {exc.msg}") from None


class Lines:
    """(line number, line without its end) of a text stream; the line is None when it was longer
    than MAX_OBJECT_CHARS (its text is read past, not kept)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.number = 0
        self._pushed: tuple[int, str | None] | None = None

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        return self

    def __next__(self) -> tuple[int, str | None]:
        if self._pushed is not None:
            item, self._pushed = self._pushed, None
            return item
        line = self.stream.readline(MAX_OBJECT_CHARS + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > MAX_OBJECT_CHARS and not line.endswith("\n"):
            while (rest := self.stream.readline(CHUNK_CHARS)) and not rest.endswith("\n"):
                pass
            return self.number, None
        return self.number, line.rstrip("\r\n")

    def push_back(self, item: tuple[int, str | None]) -> None:
        self._pushed = item


@dataclass(frozen=True)
class Event:
    """What `read_output_file` found: `metadata` or `item` (value set), `dropped` (one item that
    could not be kept; reason set) or `end` (the file stopped being readable; reason set)."""

    kind: str
    line: int
    value: Any = None
    reason: str = ""


class _Truncated(Exception):
    pass


class _Chunks:
    """A sliding window over a text stream: `buf[pos:]` is unread; text before `keep` (or `pos`)
    is let go as more is read."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.buf = ""
        self.pos = 0
        self.keep: int | None = None
        self.oversized = False
        self.lines_before = 0  # newlines in text already let go

    def more(self) -> bool:
        data = self.stream.read(CHUNK_CHARS)
        if not data:
            return False
        cut = self.pos if self.keep is None else min(self.keep, self.pos)
        if cut:
            self.lines_before += self.buf.count("\n", 0, cut)
            self.buf = self.buf[cut:]
            self.pos -= cut
            if self.keep is not None:
                self.keep -= cut
        self.buf += data
        return True

    def line(self) -> int:
        return self.lines_before + self.buf.count("\n", 0, self.pos) + 1

    def peek(self) -> str | None:
        """The next character after whitespace (None at the end)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None

    def _grew(self) -> None:
        """Let go of the value being cut out once it is over the size limit."""
        if self.keep is not None and self.pos - self.keep > MAX_OBJECT_CHARS:
            self.keep = None
            self.oversized = True

    def _need_more(self) -> None:
        self._grew()
        if not self.more():
            raise _Truncated

    def _skip_string(self) -> None:
        """Move past the string whose opening quote is just before `pos`."""
        while True:
            self.pos = _STRING_BODY.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) and self.buf[self.pos] == '"':
                self.pos += 1
                return
            # The end of what was read, or a backslash whose escaped character is still to come.
            self._need_more()

    def value(self) -> tuple[str | None, str]:
        """Cut out the next JSON value: (its text, "") or (None, why it is not kept). Raises
        _Truncated when the stream ends inside it."""
        start_char = self.peek()
        if start_char is None:
            raise _Truncated
        self.keep, self.oversized = self.pos, False
        try:
            deepest = 0
            if start_char == '"':
                self.pos += 1
                self._skip_string()
            elif start_char in "[{":
                depth = 0
                while True:
                    match = _STRUCTURE.search(self.buf, self.pos)
                    if match is None:
                        self.pos = len(self.buf)
                        self._need_more()
                        continue
                    char, self.pos = match.group(), match.end()
                    if char == '"':
                        self._skip_string()
                    elif char in "[{":
                        depth += 1
                        deepest = max(deepest, depth)
                    else:
                        depth -= 1
                        if depth == 0:
                            break
                    self._grew()
            else:
                while (end := _SCALAR.match(self.buf, self.pos).end()) == len(self.buf):
                    self.pos = end
                    self._grew()
                    if not self.more():
                        break
                self.pos = end
                self._grew()
            if self.oversized:
                return None, f"a JSON value of more than {MAX_OBJECT_CHARS} characters"
            if deepest > MAX_JSON_DEPTH:
                return None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            return self.buf[self.keep:self.pos], ""
        finally:
            self.keep = None


def _items(chunks: _Chunks, count: list[int]) -> Iterator[Event]:
    """The items of the list whose `[` is next; `count` holds how many were complete."""
    chunks.pos += 1
    if chunks.peek() == "]":
        chunks.pos += 1
        return
    while True:
        line = chunks.line()
        text, reason = chunks.value()
        count[0] += 1
        if text is None:
            yield Event("dropped", line, reason=reason)
        else:
            try:
                yield Event("item", line, value=loads(text))
            except Invalid as exc:
                yield Event("dropped", line, reason=str(exc))
        char = chunks.peek()
        if char == ",":
            chunks.pos += 1
        elif char == "]":
            chunks.pos += 1
            return
        else:
            raise _Truncated


def read_output_file(stream: TextIO) -> Iterator[Event]:
    """The run header (`metadata`) and the result objects (`item`) of an output file, in order."""
    chunks = _Chunks(stream)
    count = [0]
    try:
        first = chunks.peek()
        if first == "[":
            yield from _items(chunks, count)
            return
        if first != "{":
            yield Event("end", chunks.line(), reason="neither a JSON list nor a JSON object")
            return
        chunks.pos += 1
        while (char := chunks.peek()) != "}":
            if char != '"':
                raise _Truncated
            key_text, _ = chunks.value()
            key = loads(key_text)
            if chunks.peek() != ":":
                raise _Truncated
            chunks.pos += 1
            if key == "results" and chunks.peek() == "[":
                yield from _items(chunks, count)
            else:
                line = chunks.line()
                text, reason = chunks.value()
                if key == "benchmark_metadata":
                    if text is None:
                        yield Event("dropped", line, reason=f"benchmark_metadata: {reason}")
                    else:
                        try:
                            yield Event("metadata", line, value=loads(text))
                        except Invalid as exc:
                            yield Event("dropped", line, reason=f"benchmark_metadata: {exc}")
            if chunks.peek() == ",":
                chunks.pos += 1
            elif chunks.peek() != "}":
                raise _Truncated
    except (_Truncated, Invalid):
        yield Event("end", chunks.line(),
                    reason=f"after {count[0]} complete result objects: the JSON is truncated or malformed there")
