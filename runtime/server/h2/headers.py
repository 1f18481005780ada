"""HPACK decoding with a cache for header blocks that leave the decoder's state unchanged.

The ``hpack`` package decodes a block in pure Python: ~15 µs for a gRPC request's headers,
measured here, most of a cheap RPC's server time. But a client's steady state repeats
itself: grpcio and tritonclient send, after the first call, the same block of references
into the dynamic table; a client writing literals without indexing (as benchmarks do) sends
identical bytes too. A block that neither inserted into nor resized the dynamic table
decodes to the same list for as long as the table stays as it is, so it is cached by its
bytes, and the cache is emptied whenever a block does change the table.
"""
from __future__ import annotations

import re

import hpack

from edgemp.errors import clipped

MAX_CACHED_BLOCK = 1024  # bytes; larger blocks are decoded every time
MAX_CACHED = 32  # blocks per connection

# RFC 9113 §8.2.1: names are visible lowercase ASCII without ':' (after a pseudo-header's
# leading one); values hold no NUL, CR or LF and do not start or end with SP or HTAB
_BAD_NAME = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def check_size_updates(block: bytes) -> None:
    """Raise ``hpack.HPACKDecodingError`` for a block that opens with more than two dynamic
    table size updates (RFC 7541 §4.2 allows two: a smaller size, then the final one).

    ``hpack`` takes any number, one Python loop step each (~1 µs a byte), and they count
    towards no header-list limit: a 64 KiB block of them held the event loop for ~100 ms.
    """
    pos, n, end = 0, 0, len(block)
    while pos < end and block[pos] & 0xE0 == 0x20:  # 001xxxxx: a size update (its integer follows)
        n += 1
        if n > 2:
            raise hpack.HPACKDecodingError("more than two dynamic table size updates at the start of a header block")
        if block[pos] & 0x1F == 0x1F:  # the 5-bit prefix is full: continuation bytes follow
            pos += 1
            while pos < end and block[pos] & 0x80:
                pos += 1
        pos += 1


class MalformedFieldError(ValueError):
    """A decoded field whose name or value HTTP/2 forbids: the request is malformed (a stream
    error), while the block was decoded and the HPACK state stays in step."""


def check_fields(fields: list[tuple[bytes, bytes]]) -> None:
    """Raise :class:`MalformedFieldError` for the first field that breaks RFC 9113 §8.2.1."""
    for name, value in fields:
        bare = name[1:] if name[:1] == b":" else name
        if not bare or _BAD_NAME.search(bare):
            raise MalformedFieldError(f"invalid header field name {clipped(name.decode('latin-1'))!r}")
        if _BAD_VALUE.search(value):
            raise MalformedFieldError(f"invalid value for header field {clipped(name.decode('latin-1'))!r}")


class HeaderDecoder:
    """One connection's HPACK decoder (state is per connection), with the cache described above."""

    __slots__ = ("decoder", "table", "cache")

    def __init__(self, max_header_list_size: int) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self.table = self.decoder.header_table
        self.cache: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def _state(self) -> tuple:
        # the newest entry by identity, not value: inserting a field equal to the newest entry
        # keeps count and newest value alike yet shifts (and may evict) every older index
        entries = self.table.dynamic_entries
        return (entries[0] if entries else None), len(entries), self.table.maxsize

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        return a[0] is b[0] and a[1] == b[1] and a[2] == b[2]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The (name, value) pairs of ``block``; raises what ``hpack`` raises for a bad one, and
        :class:`MalformedFieldError` for a field HTTP/2 forbids (checked once per distinct block)."""
        fields = self.cache.get(block)
        if fields is not None:
            return fields
        check_size_updates(block)
        before = self._state()
        try:
            fields = self.decoder.decode(block, raw=True)
        finally:
            # Before anything can raise: a block that changed the table and is then refused (a
            # forbidden field is only a stream error) must still empty the cache, or a cached block
            # that refers to the table would keep decoding to what the table held before.
            changed = not self._same(self._state(), before)
            if changed:
                self.cache.clear()  # entries cached against the old table may now decode differently
        check_fields(fields)
        if not changed and len(block) <= MAX_CACHED_BLOCK:
            if len(self.cache) >= MAX_CACHED:
                self.cache.clear()
            self.cache[block] = fields
        return fields
