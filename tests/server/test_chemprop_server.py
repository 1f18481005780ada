"""SMILES over HTTP: ``/v1 {"smiles": [...]}`` and a V2 BYTES ``smiles`` input (real server, real tritonclient).

The served model is a chemprop model exported by edgemp; answers are compared with chemprop's own
predictions for the same molecules, so the whole path (featurizer named in the metadata → batcher →
ONNX Runtime) is checked, not just that something comes back.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rdkit")
torch = pytest.importorskip("torch")
pytest.importorskip("chemprop")

from server_utils import http, start_server  # noqa: E402

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "[Na+].[Cl-]", "O=C1NC(=O)c2ccccc12"]


@pytest.fixture(scope="module")
def chemprop_onnx(tmp_path_factory):
    from chemprop import nn as cnn
    from chemprop.models import MPNN, save_model

    from edgemp.export.onnx_export import export_model

    d = tmp_path_factory.mktemp("chemprop_served")
    torch.manual_seed(0)
    ffn = cnn.RegressionFFN(n_tasks=2, input_dim=32, hidden_dim=16,
                            output_transform=cnn.UnscaleTransform(np.array([-2.0, 3.0]), np.array([1.5, 0.5])))
    model = MPNN(cnn.BondMessagePassing(d_h=32, depth=3), cnn.MeanAggregation(), ffn).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_model(d / "best.pt", model, ["a", "b"])
    export_model(d / "best.pt", d / "model.onnx")
    return d / "model.onnx", d / "best.pt"


def _chemprop(path, smiles):
    from chemprop_reference import chemprop_predict

    return chemprop_predict(path, smiles)


def test_v1_smiles_answers_in_order_with_per_item_errors(chemprop_onnx, tmp_path):
    onnx_path, ckpt = chemprop_onnx
    server = start_server(onnx_path, tmp_path)
    try:
        body = {"smiles": MOLECULES[:2] + ["C1CC", 12] + MOLECULES[2:], "id": "r1"}
        status, _, raw = http(server, "POST", "/v1/models/model/predict", json.dumps(body).encode())
        assert status == 200, raw
        out = json.loads(raw)
        assert out["id"] == "r1" and len(out["outputs"]) == len(MOLECULES) + 2
        assert out["outputs"][2] == {"error": "smiles[2]: invalid SMILES 'C1CC'"}
        assert "smiles[3]" in out["outputs"][3]["error"]
        got = np.array([o["prediction"] for i, o in enumerate(out["outputs"]) if i not in (2, 3)])
        np.testing.assert_allclose(got, _chemprop(ckpt, MOLECULES), rtol=0, atol=1e-4)

        status, _, raw = http(server, "POST", "/v1/models/model/predict", b'{"smiles": ["C1CC", ""]}')
        assert status == 400 and "no valid molecule" in json.loads(raw)["error"]
        # graphs still work on a molecule model
        from edgemp.chem import get_featurizer
        from edgemp.graphio import graph_to_json

        g = get_featurizer("chemprop-v2/1").featurize("CCO")
        status, _, raw = http(server, "POST", "/v1/models/model/predict",
                              json.dumps({"graphs": [graph_to_json(g)]}).encode())
        assert status == 200
        np.testing.assert_allclose(json.loads(raw)["outputs"][0]["prediction"], got[0], atol=1e-5)
        # ... but a graph whose edges are not reverse pairs would silently get a wrong answer: refused
        bad = graph_to_json(g)
        bad["edge_index"] = [[0, 1, 1, 2], [1, 2, 0, 1]]
        status, _, raw = http(server, "POST", "/v1/models/model/predict", json.dumps({"graphs": [bad]}).encode())
        assert status == 400 and "not the reverse of edge 0" in json.loads(raw)["error"]
    finally:
        assert server.stop() == 0


def test_v2_bytes_smiles_input_with_tritonclient(chemprop_onnx, tmp_path):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    onnx_path, ckpt = chemprop_onnx
    server = start_server(onnx_path, tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.url)
        for binary in (True, False):
            inp = httpclient.InferInput("smiles", [len(MOLECULES)], "BYTES")
            inp.set_data_from_numpy(np.array(MOLECULES, dtype=object), binary_data=binary)
            result = client.infer("model", [inp])
            np.testing.assert_allclose(result.as_numpy("prediction"), _chemprop(ckpt, MOLECULES), rtol=0, atol=1e-4)
        bad = httpclient.InferInput("smiles", [2], "BYTES")
        bad.set_data_from_numpy(np.array(["CCO", "C1CC"], dtype=object))
        with pytest.raises(InferenceServerException, match=r"smiles\[1\]: invalid SMILES 'C1CC'"):
            client.infer("model", [bad])
    finally:
        assert server.stop() == 0


def test_smiles_without_rdkit_is_a_clear_400(chemprop_onnx, tmp_path, monkeypatch):
    """An edge box with the base install only: graphs work, SMILES get the install hint."""
    blocker = tmp_path / "no_rdkit" / "rdkit"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('rdkit is not installed here')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))
    server = start_server(chemprop_onnx[0], tmp_path)
    try:
        status, _, raw = http(server, "POST", "/v1/models/model/predict", b'{"smiles": ["CCO"]}')
        assert status == 400 and "pip install 'edgemp[chem]'" in json.loads(raw)["error"]
    finally:
        assert server.stop() == 0
