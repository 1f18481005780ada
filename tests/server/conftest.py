"""Fixtures the server test modules share (each module builds its own ``repo``)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def gnn(repo):
    """The in-process model behind the repository's ``gnn`` entry: the answer a served request must equal."""
    from edgemp.runtime.model import load

    with load(repo / "gnn" / "model.onnx") as m:
        yield m
