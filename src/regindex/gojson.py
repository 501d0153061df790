"""JSON as the registry's Go ``encoding/json`` reads it (distribution 2.8.2), in bounded memory.

What differs from Python's ``json`` (each observed against docker-registry 2.8.2, tests/test_gojson.py):
- a byte-order mark, UTF-16 or UTF-32 text, ``NaN``/``Infinity``, trailing non-space: refused;
- bytes that are not UTF-8 inside a string are read as U+FFFD (so is a lone surrogate escape ``\\ud800``);
- nesting up to 10000 levels is valid (Python's parser stops near 1000), deeper is refused;
- object keys match struct fields case-insensitively, the last duplicate wins (``GoObject``);
- numbers keep their spelling class: an integer literal is an ``int`` (or ``BigNumber`` past 20 digits), any
  other (``2.0``, ``1e3``) a ``float``, which Go refuses for an integer field.
Documents above ``STREAM_ABOVE`` bytes, or nested deeper than Python can follow, are read by an iterative
scanner that validates every value without building it; only top-level members in ``keep`` are decoded, and
their arrays element by element (a run of empty objects is counted, not built): a 60 MiB document of 21
million ``{}`` costs a few MiB, not gigabytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

MAX_DEPTH = 10000  # encoding/json's scanner limit
STREAM_ABOVE = 4 << 20  # the registry refuses to PUT larger manifests (maxManifestBodySize): only storage has them


class GoJSONError(ValueError):
    """Not JSON that Go's decoder accepts."""


class BigNumber:
    """An integer literal too long for any Go integer (kept as text: Python refuses to convert >4300 digits)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text if len(self.text) <= 40 else self.text[:37] + "..."


def fold(key: str) -> str:
    """Go's case-insensitive field match (bytes.EqualFold), close enough for ASCII field names."""
    return key.lower().replace("\u017f", "s")  # 'ſ' folds to 's' in Go; 'K' (Kelvin) lowers to 'k' here


# Keys folded once: field names repeat in every manifest (parsing folds ~60 keys a manifest). Bounded in
# entries and in key length: a document's keys are hostile (a key may be megabytes, a document may hold
# millions of distinct keys); past the bound, keys are folded each time, as before.
_FOLDED: dict[str, str] = {}
_FOLDED_MAX, _FOLDED_KEY_MAX = 1024, 64


def _folded(key: str) -> str:
    f = _FOLDED.get(key)
    if f is None:
        f = fold(key)
        if len(_FOLDED) < _FOLDED_MAX and len(key) <= _FOLDED_KEY_MAX:
            _FOLDED[key] = f
    return f


class GoObject(dict[str, Any]):
    """A JSON object keyed by folded key: ``get("mediaType")`` finds ``"MEDIATYPE"``; the last duplicate wins."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, _folded(key), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, _folded(key))


class Runs:
    """A JSON array read element by element: runs of empty objects are kept as counts."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, Any]] = []  # (count, value): value repeated count times

    def add(self, value: Any, count: int = 1) -> None:
        if self.parts and self.parts[-1][1] is value:
            self.parts[-1] = (self.parts[-1][0] + count, value)
        else:
            self.parts.append((count, value))

    def __iter__(self) -> Iterator[Any]:
        for count, value in self.parts:
            for _ in range(count):
                yield value

    def __len__(self) -> int:
        return sum(c for c, _ in self.parts)


def distinct(values: Any) -> Iterable[Any]:
    """Each element of a list, or each distinct run of ``Runs`` (to check types once per run)."""
    if isinstance(values, Runs):
        return [v for _c, v in values.parts]
    return values


def counted(values: Any) -> Iterable[tuple[int, Any]]:
    """(count, element) pairs: 1 per list element, a run's length for ``Runs``."""
    if isinstance(values, Runs):
        return values.parts
    return ((1, v) for v in values)


_EMPTY = GoObject()


def _pairs(pairs: list[tuple[str, Any]]) -> GoObject:
    if not pairs:
        return _EMPTY
    obj = GoObject()
    for k, v in pairs:
        dict.__setitem__(obj, _folded(k), v)
    return obj


def _go_int(text: str) -> int | BigNumber:
    return int(text) if len(text) <= 20 else BigNumber(text)


def _no_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character {name[0]!r} looking for beginning of value")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_go_int, parse_constant=_no_constant)

_WS = re.compile(r"[ \t\n\r]*")
_STR = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_STRING = re.compile(_STR)
_NUMBER = re.compile(_NUM)
# a run of flat array elements, each followed by a comma, consumed in one regex call (at most _RUN of them:
# the regex engine keeps state per repetition, so an unbounded run of millions would cost gigabytes)
_RUN = 4096
_FLAT = re.compile(
    rf"(?:[ \t\n\r]*(?:\{{[ \t\n\r]*\}}|\[[ \t\n\r]*\]|{_STR}|{_NUM}|true|false|null)[ \t\n\r]*,){{1,{_RUN}}}")
_EMPTY_OBJECTS = re.compile(rf"(?:[ \t\n\r]*\{{[ \t\n\r]*\}}[ \t\n\r]*,){{1,{_RUN}}}")


def loads(raw: bytes, keep: Iterable[str] = ()) -> Any:
    """Decode ``raw`` as Go would. ``keep``: top-level keys needed (only used on the streaming path, where
    every other member is validated and skipped)."""
    if raw[:3] == b"\xef\xbb\xbf":
        raise GoJSONError("invalid character 'ï' looking for beginning of value (a byte-order mark)")
    # bytes that are not UTF-8 become surrogate escapes: inside strings they are data (the caller reads them
    # as U+FFFD), anywhere else they are characters no JSON grammar rule accepts
    text = raw.decode("utf-8", "surrogateescape")
    if len(raw) <= STREAM_ABOVE:
        try:
            value, end = _DECODER.raw_decode(text, _ws_end(text, 0))
        except json.JSONDecodeError as exc:
            raise GoJSONError(_short(exc.msg, exc.pos)) from None
        except RecursionError:
            pass  # deeper than Python follows: the scanner below decides (Go accepts up to 10000 levels)
        else:
            if _ws_end(text, end) != len(text):
                raise GoJSONError(f"invalid character after top-level value at offset {end}")
            return value
    return _Scanner(text).document({fold(k) for k in keep})


def _ws_end(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _short(msg: str, pos: int) -> str:
    return f"{msg} at offset {pos}"


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)

    def fail(self, pos: int, what: str = "") -> GoJSONError:
        if pos >= self.n:
            return GoJSONError("unexpected end of JSON input")
        return GoJSONError(what or f"invalid character {self.text[pos]!r} at offset {pos}")

    def ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        assert m is not None
        return m.end()

    def key(self, pos: int) -> tuple[str, int]:
        m = _STRING.match(self.text, pos)
        if m is None:
            raise self.fail(pos)
        pos = self.ws(m.end())
        if pos >= self.n or self.text[pos] != ":":
            raise self.fail(pos)
        return json.loads(m.group()), pos + 1

    def skip(self, pos: int, depth: int) -> int:
        """Validate the value at ``pos`` (``depth`` containers around it); return where it ends."""
        text, n = self.text, self.n
        stack: list[str] = []
        while True:
            # a value is expected
            pos = self.ws(pos)
            if pos >= n:
                raise self.fail(pos)
            c = text[pos]
            if c in "{[":
                if depth + len(stack) + 1 > MAX_DEPTH:
                    raise GoJSONError(f"exceeded max depth ({MAX_DEPTH}) at offset {pos}")
                stack.append(c)
                pos = self.ws(pos + 1)
                if pos < n and text[pos] == ("}" if c == "{" else "]"):
                    stack.pop()
                    pos += 1
                elif c == "{":
                    _k, pos = self.key(pos)
                    continue
                else:
                    pos = self._flat(pos, depth + len(stack))
                    continue
            elif c == '"':
                m = _STRING.match(text, pos)
                if m is None:
                    raise self.fail(pos, f"invalid string at offset {pos}")
                pos = m.end()
            elif c == "-" or c.isdigit():
                m = _NUMBER.match(text, pos)
                if m is None:
                    raise self.fail(pos)
                pos = m.end()
            elif text.startswith("true", pos) or text.startswith("null", pos):
                pos += 4
            elif text.startswith("false", pos):
                pos += 5
            else:
                raise self.fail(pos)
            # after a value: close containers, or a comma for the next one
            while True:
                if not stack:
                    return pos
                pos = self.ws(pos)
                c = text[pos] if pos < n else ""
                if c == ",":
                    pos += 1
                    if stack[-1] == "{":
                        _k, pos = self.key(self.ws(pos))
                    else:
                        pos = self._flat(pos, depth + len(stack))
                    break
                if c == ("}" if stack[-1] == "{" else "]"):
                    stack.pop()
                    pos += 1
                    continue
                raise self.fail(pos)

    def _flat(self, pos: int, depth: int) -> int:
        """Inside an array: consume runs of flat elements (and their commas), _RUN at a time."""
        if depth + 1 <= MAX_DEPTH:
            while (m := _FLAT.match(self.text, pos)) is not None:
                pos = m.end()
        return pos

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        """Decode a (kept) value: arrays element by element, anything else once validated."""
        pos = self.ws(pos)
        if pos < self.n and self.text[pos] == "[":
            return self.array(pos, depth)
        end = self.skip(pos, depth)
        return _decode(self.text[pos:end]), end

    def array(self, pos: int, depth: int) -> tuple[Runs, int]:
        out = Runs()
        pos = self.ws(pos + 1)
        if pos < self.n and self.text[pos] == "]":
            return out, pos + 1
        while True:
            while (m := _EMPTY_OBJECTS.match(self.text, pos)) is not None:
                out.add(_EMPTY, self.text.count(",", pos, m.end()))
                pos = m.end()
            start = self.ws(pos)
            end = self.skip(start, depth + 1)
            out.add(_decode(self.text[start:end]))
            pos = self.ws(end)
            c = self.text[pos] if pos < self.n else ""
            if c == "]":
                return out, pos + 1
            if c != ",":
                raise self.fail(pos)
            pos += 1

    def document(self, keep: set[str]) -> Any:
        pos = self.ws(0)
        if pos >= self.n or self.text[pos] != "{":
            end = self.skip(pos, 0)  # valid JSON that is not an object: the caller refuses it by type
            if self.ws(end) != self.n:
                raise self.fail(self.ws(end))
            return {"[": [], '"': "", "n": None, "t": True, "f": False}.get(self.text[pos], 0)
        obj = GoObject()
        pos = self.ws(pos + 1)
        if pos < self.n and self.text[pos] == "}":
            pos += 1
        else:
            while True:
                key, pos = self.key(pos)
                if fold(key) in keep:
                    val, pos = self.value(pos, 1)
                    dict.__setitem__(obj, fold(key), val)
                else:
                    pos = self.skip(pos, 1)
                pos = self.ws(pos)
                c = self.text[pos] if pos < self.n else ""
                if c == "}":
                    pos += 1
                    break
                if c != ",":
                    raise self.fail(pos)
                pos = self.ws(pos + 1)
        if self.ws(pos) != self.n:
            raise self.fail(self.ws(pos))
        return obj


def _decode(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except RecursionError:
        # validated already (so at most MAX_DEPTH deep), but too deep to build here: no manifest field nests
        # like this, so for the caller it is a value of the wrong type
        return _TooDeep()


class _TooDeep:
    """A validated value nested too deeply to build (a type error for any manifest field)."""
