"""JSON from files and metadata, where every way the text can be bad is one EdgempError.

``json.loads`` fails in more ways than :class:`json.JSONDecodeError`: deep nesting raises
:class:`RecursionError`, an integer of over 4300 digits a plain :class:`ValueError`, and
bytes that are not UTF-8 a :class:`UnicodeDecodeError`. Every reader of user JSON (graph
files, checkpoint and repository ``config.json``, ONNX metadata) goes through here so none
of them lets one escape as a traceback. Numpy-free and torch-free: the runtime imports it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemp.errors import EdgempError


def _reason(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg}: line {e.lineno} column {e.colno}"
    # e.g. "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits";
    # the advice after ';' (sys.set_int_max_str_digits) is for programmers, not for users.
    return str(e).split(";")[0]


def load_json(text: str, where: str, error: type[EdgempError] = EdgempError) -> Any:
    """``json.loads(text)``; any failure is ``error("<where>: not valid JSON (<reason>)")``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({_reason(e)})") from e


def decode_utf8(raw: bytes, where: str, error: type[EdgempError] = EdgempError) -> str:
    """``raw`` as UTF-8 text; bad bytes are ``error`` naming ``where`` and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from e


def read_json(path: str | Path, error: type[EdgempError] = EdgempError) -> Any:
    """The JSON value in file ``path``: unreadable, non-UTF-8 and invalid files are ``error``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from e
    return load_json(decode_utf8(raw, str(path), error), str(path), error)


def holds_bool(data: object) -> bool:
    """Whether decoded JSON ``data`` (a number, or nested lists of them) holds a ``true`` or ``false``:
    numpy reads a true among numbers as 1, so every reader of numbers asks this first (~50 ns a number;
    callers skip it when the text has no ``true``/``false`` token at all)."""
    if isinstance(data, list):
        if data and isinstance(data[0], list):
            return any(holds_bool(row) for row in data)
        return bool in map(type, data)
    return type(data) is bool
