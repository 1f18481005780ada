"""SMILES in, on the server, for models that record their molecule featurizer.

* ``POST /v1/models/{m}/predict {"smiles": ["CCO", ...]}`` — each molecule is featurized with
  the model's own featurizer (:mod:`edgemp.runtime.smiles`), the valid ones go through the
  shared batcher as one request, and the answer lists one entry per SMILES, in order: the
  outputs, or ``{"error": "smiles[i]: ..."}`` for a molecule that cannot be featurized. When
  none is valid the request fails as a whole (400).
* KServe V2 infer with a BYTES input ``smiles`` (shape ``[n]`` or ``[n, 1]``) for
  ``tritonclient`` users: V2 has no per-item errors, so any invalid SMILES fails the request
  with a 400 that names it.

Featurizing costs ~0.1 ms per molecule; the request core decodes large bodies in a worker
thread, not on the event loop. A server without rdkit answers with a 400 naming the fix.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgemp.chem import MoleculeFeaturizer, featurize_smiles
from edgemp.errors import EdgempError
from edgemp.graph import Graph
from edgemp.runtime.server import jsoncodec
from edgemp.runtime.server.protocol import V1_BINARY_HINT, ProtocolError, json_values, load_json, parse_v1_body
from edgemp.runtime.smiles import model_featurizer
from edgemp.spec import ExportedModelSpec

if TYPE_CHECKING:
    from edgemp.runtime.server.served import ServedModel

SMILES_INPUT = "smiles"  # the V2 BYTES input a molecule model takes besides the graph tensors
_EXAMPLE = '{"smiles": ["CCO", "c1ccccc1O", ...]}'


def takes_smiles(spec: ExportedModelSpec) -> bool:
    return bool(spec.model.featurizer)


def _featurizer(spec: ExportedModelSpec) -> MoleculeFeaturizer:
    try:
        return model_featurizer(spec)
    except EdgempError as e:
        raise ProtocolError(str(e)) from e


def _invalid(errors: list[tuple[int, EdgempError]], what: str) -> str:
    shown = "; ".join(f"{what}[{i}]: {e}" for i, e in errors[:3])
    return shown + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")


def tensor_to_graphs(tensors: dict[str, np.ndarray], spec: ExportedModelSpec) -> list[Graph]:
    """A V2 request's ``smiles`` BYTES tensor as graphs; any invalid SMILES fails it (400, named)."""
    if set(tensors) != {SMILES_INPUT}:
        raise ProtocolError(f"send either {SMILES_INPUT!r} alone or the graph tensors, not both")
    arr = tensors[SMILES_INPUT]
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ProtocolError(f"input {SMILES_INPUT!r} has shape {list(arr.shape)}; expected [n] or [n, 1] with n >= 1")
    smiles = []
    for i, s in enumerate(arr):
        try:
            smiles.append(s.decode("utf-8") if isinstance(s, bytes) else s)
        except UnicodeDecodeError as e:
            raise ProtocolError(f"smiles[{i}] is not UTF-8") from e
    items = featurize_smiles(_featurizer(spec), smiles)
    errors = [(i, g) for i, g in enumerate(items) if isinstance(g, EdgempError)]
    if errors:
        raise ProtocolError(_invalid(errors, "smiles"))
    return items  # type: ignore[return-value]


def _parse(body: bytes, spec: ExportedModelSpec) -> tuple[list, int | None, str | None]:
    smiles, timeout, request_id = parse_v1_body(body, SMILES_INPUT, _EXAMPLE)
    items = featurize_smiles(_featurizer(spec), smiles)
    errors = [(i, g) for i, g in enumerate(items) if isinstance(g, EdgempError)]
    if len(errors) == len(items):
        raise ProtocolError("no valid molecule in the request: " + _invalid(errors, "smiles"))
    return items, timeout, request_id


def _render(items: list, results: list, model_name: str, request_id: str | None) -> bytes:
    answers = iter(results)
    outputs = [{"error": f"smiles[{i}]: {item}"} if isinstance(item, EdgempError)
               else {name: json_values(name, value, V1_BINARY_HINT) for name, value in next(answers).items()} for i, item in enumerate(items)]
    out: dict = {"model_name": model_name}
    if request_id is not None:
        out["id"] = request_id
    out["outputs"] = outputs
    return jsoncodec.dumps(out)


class V1SmilesCall:
    """``{"smiles": [...]}`` as a request-core call: the valid molecules run as one request,
    the answer holds one entry per SMILES, in order (outputs, or an error naming the item)."""

    __slots__ = ("model_name", "entries", "items", "timeout_us", "request_id")

    def __init__(self, served: "ServedModel", body: bytes) -> None:
        self.entries, self.timeout_us, self.request_id = _parse(body, served.spec)
        self.items = [g for g in self.entries if not isinstance(g, EdgempError)]
        self.model_name = served.name

    def encode(self, results: list) -> bytes:
        return _render(self.entries, results, self.model_name, self.request_id)


def is_smiles_body(body: bytes) -> bool:
    """Whether a /v1 body is ``{"smiles": [...]}`` rather than ``{"graphs": [...]}``."""
    if b'"smiles"' not in body:  # cheap pre-check: graph bodies never parse twice
        return False
    obj = load_json(body, "request")
    return isinstance(obj, dict) and SMILES_INPUT in obj
