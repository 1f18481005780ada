"""How a client's value is shown in an error message."""
from __future__ import annotations

from edgemp.errors import clipped


def test_a_long_value_is_cut_and_says_so():
    assert clipped("abc") == "abc"
    assert clipped("x" * 64) == "x" * 64  # at the limit: whole
    assert clipped("x" * 65) == "x" * 61 + "..."  # past it: the limit, "..." included
    assert len(clipped("y" * 10_000, 200)) == 200
    assert clipped(["a"] * 40, 16) == "['a', 'a', 'a..."  # anything, as str() shows it
    assert clipped("abcdef", 2) == "..."  # a limit too small to show any of it still marks the cut
