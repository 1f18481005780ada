"""Fixtures the server test modules share (each module builds its own ``repo``)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def gnn(repo):
    """The in-process model behind the repository's ``gnn`` entry: the answer a served request must equal."""
    from edgemp.runtime.model import load

    with load(repo / "gnn" / "model.onnx") as m:
        yield m


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small sparse GNN export (the HTTP/2 gRPC modules serve it), built once per module."""
    from runtime_fixtures import build_sparse_model

    path = tmp_path_factory.mktemp("gnn_model") / "gnn.onnx"
    build_sparse_model(path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    """The in-process model a served answer must equal."""
    from edgemp.runtime.model import load

    with load(model_path) as m:
        yield m
