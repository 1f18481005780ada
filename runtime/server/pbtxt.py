"""A small reader for protobuf text format (Triton's ``config.pbtxt``), without protobuf.

The serving runtime installs only what serving needs, and Triton's ``ModelConfig``
schema ships with tritonclient, not here. So a repository's ``config.pbtxt`` is parsed
into plain values — a message is a ``dict`` of field name to a *list* of values (fields
repeat), scalars are ``str`` / ``int`` / ``float`` / ``bool`` or an enum name — and
:mod:`edgemp.runtime.server.repository` checks the fields it relies on. A syntax error is
a :class:`PbtxtError` naming the line, never something silently ignored.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from edgemp.errors import ModelFormatError, clipped

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[:{}\[\]<>,;])
""", re.VERBOSE)
MAX_DEPTH = 32


class PbtxtError(ModelFormatError):
    """A ``config.pbtxt`` is not valid protobuf text."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PbtxtError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


def _string(token: str, line: int) -> str:
    """A quoted string token's value; its escapes are Python's, and one Python refuses
    (``"\\x4"``, ``"\\N{nope}"``) is a :class:`PbtxtError`, not a SyntaxError."""
    try:
        return ast.literal_eval(token)
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL character on Python < 3.12
        raise PbtxtError(f"line {line}: bad string escape in {clipped(token, 40)}") from e


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _next(self, what: str) -> tuple[str, str, int]:
        tok = self._peek()
        if tok is None:
            last = self.toks[-1][2] if self.toks else 1
            raise PbtxtError(f"line {last}: unexpected end of file, expected {what}")
        self.i += 1
        return tok

    def message(self, close: str | None, depth: int) -> dict[str, list]:
        if depth > MAX_DEPTH:
            raise PbtxtError("messages are nested too deeply")
        fields: dict[str, list] = {}
        while True:
            tok = self._peek()
            if tok is None:
                if close is not None:
                    self._next(f"{close!r}")
                return fields
            if tok[0] == "punct" and tok[1] == close:
                self.i += 1
                return fields
            kind, name, line = self._next("a field name")
            if kind != "ident":
                raise PbtxtError(f"line {line}: expected a field name, got {name!r}")
            values = fields.setdefault(name, [])
            tok = self._peek()
            colon = tok is not None and tok[1] == ":"
            if colon:
                self.i += 1
            tok = self._peek()
            if tok is not None and tok[1] == "[":
                self.i += 1
                values.extend(self._list(depth))
            else:
                if not colon and (tok is None or tok[1] not in "{<"):
                    raise PbtxtError(f"line {line}: expected ':' after {name!r}")
                values.append(self._value(depth))
            tok = self._peek()
            if tok is not None and tok[1] in ",;":
                self.i += 1

    def _list(self, depth: int) -> list:
        items: list = []
        tok = self._peek()
        if tok is not None and tok[1] == "]":
            self.i += 1
            return items
        while True:
            items.append(self._value(depth))
            kind, text, line = self._next("',' or ']'")
            if text == "]":
                return items
            if text != ",":
                raise PbtxtError(f"line {line}: expected ',' or ']' in a list, got {text!r}")

    def _value(self, depth: int) -> Any:
        kind, text, line = self._next("a value")
        if kind == "punct" and text in "{<":
            return self.message("}" if text == "{" else ">", depth + 1)
        if kind == "string":
            value = _string(text, line)
            while (tok := self._peek()) is not None and tok[0] == "string":  # "a" "b" concatenates
                value += _string(tok[1], tok[2])
                self.i += 1
            return value
        if kind == "number":
            body = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
            try:
                return int(body, 0) if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", body) else float(body)
            except ValueError as e:
                raise PbtxtError(f"line {line}: bad number {text!r}") from e
        if kind == "ident":
            return {"true": True, "True": True, "false": False, "False": False}.get(text, text)
        raise PbtxtError(f"line {line}: expected a value, got {text!r}")


def parse(text: str) -> dict[str, list]:
    """Protobuf text as ``{field: [values]}`` (nested messages alike); :class:`PbtxtError` if malformed."""
    return _Parser(text).message(None, 0)
