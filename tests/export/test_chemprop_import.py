"""chemprop v2 checkpoints → edgemp: safe import, exact rebuild, verified export, SMILES predictions.

chemprop is the reference and is only imported by these tests. Models come from chemprop's
own Python API (every supported option) and from its CLI (the path users take); predictions
are compared on molecules the models never saw.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
torch = pytest.importorskip("torch")
pytest.importorskip("chemprop")

from click.testing import CliRunner  # noqa: E402

from edgemp.cli.main import cli  # noqa: E402
from edgemp.errors import CheckpointError  # noqa: E402
from edgemp.export.chemprop_import import is_chemprop_checkpoint, load_chemprop_model  # noqa: E402
from chemprop_reference import chemprop_predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _solubility(split: str) -> list[tuple[str, float]]:
    with open(ROOT / "edgemp" / "data" / "solubility.csv", newline="") as fh:
        return [(r["smiles"], float(r["logS"])) for r in csv.DictReader(fh) if r["split"] == split]


UNSEEN = [s for s, _ in _solubility("test")[::3]]  # never in any training set below


def _edgemp_eager(path: Path, smiles: list[str]) -> np.ndarray:
    from edgemp.chem import get_featurizer
    from edgemp.graph import collate

    model, _ = load_chemprop_model(path)
    f = get_featurizer(model.cfg.featurizer)
    b = collate([f.featurize(s) for s in smiles])
    t = {k: torch.from_numpy(v) for k, v in b.tensors().items()}
    with torch.no_grad():
        out = model(t["x"], t["edge_index"], t["edge_attr"], t["node_graph"], b.num_graphs)
    return next(iter(out.values())).numpy()


def _save(model, path: Path, columns: list[str]) -> Path:
    from chemprop.models import save_model

    torch.manual_seed(1)
    with torch.no_grad():  # untrained weights are too uniform to catch a wrong wiring; shake them
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if hasattr(model.bn, "running_mean"):
            model.bn.running_mean.normal_()
            model.bn.running_var.uniform_(0.5, 2.0)
    save_model(path, model.eval(), columns)
    return path


def _build(kind: str):
    from chemprop import nn as cnn
    from chemprop.models import MPNN

    if kind == "regression-unscale-bn-mean":
        mp = cnn.BondMessagePassing(d_h=40, depth=4, bias=True)
        ffn = cnn.RegressionFFN(n_tasks=2, input_dim=40, hidden_dim=24, n_layers=2,
                                output_transform=cnn.UnscaleTransform(np.array([-3.0, 1.5]), np.array([2.0, 0.5])))
        return MPNN(mp, cnn.MeanAggregation(), ffn, batch_norm=True), "v2"
    if kind == "binary-undirected-leakyrelu-norm":
        mp = cnn.BondMessagePassing(d_h=32, depth=3, undirected=True, activation="leakyrelu")
        return MPNN(mp, cnn.NormAggregation(norm=37.0), cnn.BinaryClassificationFFN(input_dim=32, hidden_dim=16,
                                                                                    activation="leakyrelu")), "v2"
    if kind == "multiclass-atom-sum-tanh":
        mp = cnn.AtomMessagePassing(d_h=24, depth=2, activation="tanh")
        ffn = cnn.MulticlassClassificationFFN(n_classes=3, n_tasks=2, input_dim=24, hidden_dim=16, activation="tanh")
        return MPNN(mp, cnn.SumAggregation(), ffn), "v2"
    if kind == "regression-v1-featurizer":
        mp = cnn.BondMessagePassing(d_v=133, d_h=32, activation=torch.nn.ELU(alpha=0.7))
        return MPNN(mp, cnn.NormAggregation(), cnn.RegressionFFN(input_dim=32, hidden_dim=16)), "v1"
    raise ValueError(kind)


@pytest.fixture(scope="module")
def api_models(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("chemprop_api")
    out = {}
    for kind in ("regression-unscale-bn-mean", "binary-undirected-leakyrelu-norm", "multiclass-atom-sum-tanh",
                 "regression-v1-featurizer"):
        model, scheme = _build(kind)
        out[kind] = (_save(model, d / f"{kind}.pt", ["a", "b"]), scheme)
    return out


@pytest.mark.parametrize("kind", ["regression-unscale-bn-mean", "binary-undirected-leakyrelu-norm",
                                  "multiclass-atom-sum-tanh", "regression-v1-featurizer"])
def test_imported_model_equals_chemprops_on_unseen_molecules(api_models, kind):
    path, scheme = api_models[kind]
    assert is_chemprop_checkpoint(path)
    model, _ = load_chemprop_model(path)
    assert model.cfg.featurizer == f"chemprop-{scheme}/1"
    ours, theirs = _edgemp_eager(path, UNSEEN), chemprop_predict(path, UNSEEN, scheme)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.ptp(theirs) > 1e-3  # the molecules really get different answers


def test_binary_and_multiclass_export_and_predict_smiles_like_chemprop(api_models, tmp_path):
    """Through the whole product path: export (verified), then predict --smiles-column torch-free."""
    smiles = UNSEEN[:40]
    csv_path = tmp_path / "mols.csv"
    csv_path.write_text("smiles\n" + "\n".join(smiles[:3]) + "\nnot-a-molecule\n" + "\n".join(smiles[3:]) + "\n")
    for kind in ("binary-undirected-leakyrelu-norm", "multiclass-atom-sum-tanh"):
        path, _ = api_models[kind]
        onnx_path, out = tmp_path / f"{kind}.onnx", tmp_path / f"{kind}.jsonl"
        r = CliRunner().invoke(cli, ["export", str(path), "-o", str(onnx_path)])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["predict", str(onnx_path), str(csv_path), "--smiles-column", "smiles",
                                     "-o", str(out)])
        assert r.exit_code == 0, r.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines[3] == {"error": "row 4: invalid SMILES 'not-a-molecule'"} and len(lines) == len(smiles) + 1
        got = np.array([line["outputs"]["probabilities"] for line in lines[:3] + lines[4:]])
        np.testing.assert_allclose(got, chemprop_predict(path, smiles), rtol=0, atol=1e-4)
    r = CliRunner().invoke(cli, ["predict", str(onnx_path), str(csv_path), "--smiles-column", "SMILES"])
    assert r.exit_code == 1 and "no column 'SMILES'; available columns: smiles" in r.output


@pytest.fixture(scope="module")
def cli_trained(tmp_path_factory) -> Path:
    """A regression model trained by chemprop's own CLI (3 epochs) on 150 training molecules."""
    d = tmp_path_factory.mktemp("chemprop_cli")
    data = d / "train.csv"
    rows = _solubility("train")[:150]
    data.write_text("smiles,logS\n" + "".join(f"{s},{y}\n" for s, y in rows))
    exe = Path(sys.executable).with_name("chemprop")
    subprocess.run([str(exe), "train", "--data-path", str(data), "--task-type", "regression", "--epochs", "3",
                    "--save-dir", str(d / "out"), "-q"], check=True, capture_output=True, timeout=600)
    return d / "out" / "model_0"


@pytest.mark.slow
def test_cli_trained_checkpoint_exports_and_predicts_like_chemprop(cli_trained, tmp_path):
    """The issue's acceptance path: chemprop train → edgemp export → edgemp predict --smiles-column."""
    smiles = UNSEEN
    csv_path = tmp_path / "unseen.csv"
    csv_path.write_text("name,smiles\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(smiles[:5]))
                        + "broken,C1CC(\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(smiles[5:], 5)))
    onnx_path, out = tmp_path / "model.onnx", tmp_path / "pred.jsonl"
    r = CliRunner().invoke(cli, ["export", str(cli_trained / "best.pt"), "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["predict", str(onnx_path), str(csv_path), "--smiles-column", "smiles",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(smiles) + 1 and lines[5] == {"error": "row 6: invalid SMILES 'C1CC('"}
    got = np.array([line["outputs"]["prediction"] for line in lines[:5] + lines[6:]])
    np.testing.assert_allclose(got, chemprop_predict(cli_trained / "best.pt", smiles), rtol=0, atol=1e-4)
    # the Lightning checkpoint of the same run imports to the same network
    ckpts = sorted((cli_trained / "checkpoints").glob("*.ckpt"))
    assert ckpts and is_chemprop_checkpoint(ckpts[0])
    assert load_chemprop_model(ckpts[0])[0].cfg == load_chemprop_model(cli_trained / "best.pt")[0].cfg
    meta = json.loads(CliRunner().invoke(cli, ["inspect", str(onnx_path), "--json"]).output)
    assert json.dumps(meta).count("chemprop-v2/1")


# -- safety: reading a checkpoint never runs code from it ------------------------------------------

class _RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _chemprop_shaped(path: Path, hyper_parameters: object) -> Path:
    torch.save({"hyper_parameters": hyper_parameters, "state_dict": {"message_passing.W_i.weight": torch.zeros(2, 2)},
                "output_columns": ["y"], "note": "chemprop.nn.message_passing"}, path)
    return path


def test_malicious_chemprop_checkpoint_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _chemprop_shaped(tmp_path / "evil.pt", {"message_passing": {"cls": _RunsCode(f"touch {sentinel}")}})
    assert is_chemprop_checkpoint(evil)  # looks like chemprop: it must be read, and refused
    with pytest.raises(CheckpointError, match=r"refused.*system"):
        load_chemprop_model(evil)
    r = CliRunner().invoke(cli, ["export", str(evil), "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and "refused" in r.output and "Traceback" not in r.output
    assert not sentinel.exists() and not (tmp_path / "x.onnx").exists()


def test_allow_listed_names_stay_inert_data(tmp_path):
    """A chemprop name called with arguments in the pickle is recorded, never imported or called."""
    # {"hyper_parameters": chemprop.cli.main.main(["train", 1]), "state_dict": {}} in pickle protocol 0:
    # REDUCE of a real chemprop entry point, which would start chemprop's CLI if anything executed it
    payload = b"(dVhyper_parameters\ncchemprop.cli.main\nmain\n((lVtrain\naI1\natRsVstate_dict\n(ds."
    path = tmp_path / "inert.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
    code = ("import sys; from edgemp.export.inert_pickle import load_inert; "
            f"d = load_inert({str(path)!r}, ('chemprop.',)); o = d['hyper_parameters']; "
            "assert type(o).global_name == 'chemprop.cli.main.main' and o.args == (['train', 1],), o.args; "
            "assert 'chemprop' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(CheckpointError, match="expected a hyper-parameter block"):
        load_chemprop_model(path)


def test_out_of_bounds_tensor_views_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"hyper_parameters": {}, "state_dict": {"w": torch.zeros(4)}, "chemprop.": 1}, path)
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04\x85", b"M\x00\x10\x85")  # size (4,) → (4096,): past the storage
            dst.writestr(item, data)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="outside its storage"):
        load_chemprop_model(path)


def test_views_larger_than_their_storage_are_refused(tmp_path):
    """A stride-0 view passes the 'last element inside' test; copying it would cost numel elements."""
    from edgemp.export.inert_pickle import load_inert

    path = tmp_path / "expanded.pt"
    torch.save({"state_dict": {"w": torch.ones(1).expand(1000, 1000)}}, path)  # 1 stored element, 10**6 viewed
    with pytest.raises(CheckpointError, match="larger than its storage"):
        load_inert(path, ("chemprop.",))


def test_a_compressed_storage_that_would_expand_a_thousandfold_is_refused(tmp_path):
    """torch.save writes entries uncompressed; re-zipped with deflate, 64 MiB of zeros is a 64 KB file.
    Refused from the entry's declared size, before a byte is inflated; a modest deflated one still loads."""
    from edgemp.export.inert_pickle import load_inert

    def rezipped(path, elements):
        torch.save({"w": torch.zeros(elements)}, path)
        buf = io.BytesIO()
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                dst.writestr(item.filename, src.read(item))
        path.write_bytes(buf.getvalue())
        return path

    bomb = rezipped(tmp_path / "bomb.pt", 16 << 20)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="expands from .* bytes when unpacked"):
        load_inert(bomb, ())
    small = load_inert(rezipped(tmp_path / "small.pt", 1000), ())
    assert small["w"].shape == (1000,) and not small["w"].any()


def test_views_within_their_storage_still_load(tmp_path):
    from edgemp.export.inert_pickle import load_inert

    full = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "views.pt"
    torch.save({"col": full[:, 1], "t": full.t(), "scalar": full[1, 2]}, path)  # share one 12-element storage
    data = load_inert(path, ())
    np.testing.assert_array_equal(data["col"], full[:, 1].numpy())
    np.testing.assert_array_equal(data["t"], full.t().numpy())
    assert data["scalar"].shape == () and data["scalar"] == 6.0


def _hparams_checkpoint(path: Path, mp: dict | None = None, pred: dict | None = None, agg: dict | None = None,
                        drop: tuple[str, ...] = ()) -> Path:
    """A bond MPNN (d_h 8, depth 2) checkpoint whose hyper-parameters the test then bends."""
    from chemprop.nn.agg import MeanAggregation
    from chemprop.nn.message_passing import BondMessagePassing
    from chemprop.nn.predictors import RegressionFFN

    from edgemp.models.dmpnn import DMPNN, DMPNNConfig

    state = DMPNN(DMPNNConfig(message_passing="bond", node_features=72, edge_features=14, hidden=8, depth=2,
                              aggregation="mean", ffn_hidden=(8,), unscale=False)).state_dict()
    m = {"cls": BondMessagePassing, "d_v": 72, "d_e": 14, "d_h": 8, "depth": 2, **(mp or {})}
    for k in drop:
        m.pop(k)
    p = {"cls": RegressionFFN, "input_dim": 8, "hidden_dim": 8, "n_layers": 1, "n_tasks": 1, **(pred or {})}
    hp = {"message_passing": m, "agg": {"cls": MeanAggregation, **(agg or {})}, "predictor": p}
    torch.save({"hyper_parameters": hp, "state_dict": state}, path)
    return path


@pytest.mark.parametrize("bend,match", [
    ({"drop": ("d_v",)}, r"message_passing\.d_v is missing"),
    ({"mp": {"d_h": "eight"}}, r"message_passing\.d_h must be an integer, got 'eight'"),
    ({"agg": {"norm": "x"}}, r"agg\.norm must be a number, got 'x'"),
    ({"pred": {"hidden_dim": None}}, r"predictor\.hidden_dim must be an integer, got None"),
    ({"mp": {"bias": "False"}}, r"message_passing\.bias must be true or false"),
    ({"mp": {"d_h": 10**7}, "pred": {"input_dim": 10**7}}, r"hidden \(d_h\) must be from 1 to 16384, got 10000000"),
    ({"mp": {"depth": 10**9}}, r"depth must be from 1 to 64, got 1000000000"),
    ({"pred": {"n_layers": 10**9}}, r"predictor\.n_layers must be 0\.\.64"),
])
def test_bad_chemprop_hyper_parameters_are_named(tmp_path, bend, match):
    path = _hparams_checkpoint(tmp_path / "m.pt", **bend)
    with pytest.raises(CheckpointError, match=match):
        load_chemprop_model(path)


def test_chemprop_config_bigger_than_its_weights_allocates_nothing(tmp_path, monkeypatch):
    """d_h=4096 passes the caps; it is checked against the 8-wide weights on the meta device first."""
    import edgemp.models.dmpnn as dmpnn

    path = _hparams_checkpoint(tmp_path / "wide.pt", {"d_h": 4096}, {"input_dim": 4096})
    real = dmpnn.DMPNN

    def shapes_only(cfg):
        assert torch.empty(0).device.type == "meta", "the model was built for real before the weights were checked"
        return real(cfg)

    monkeypatch.setattr(dmpnn, "DMPNN", shapes_only)
    with pytest.raises(CheckpointError, match="has shape"):
        load_chemprop_model(path)


@pytest.mark.parametrize("what,match", [
    ("descriptors", "extra molecule descriptors"),
    ("mve", "predictor MveFFN is not supported"),
    ("attentive", "aggregation AttentiveAggregation is not supported"),
])
def test_unsupported_chemprop_features_are_named(tmp_path, what, match):
    from chemprop import nn as cnn
    from chemprop.models import MPNN

    mp = cnn.BondMessagePassing(d_h=16)
    if what == "descriptors":
        model = MPNN(mp, cnn.NormAggregation(), cnn.RegressionFFN(input_dim=20),
                     X_d_transform=cnn.ScaleTransform(np.zeros(4), np.ones(4)))
    elif what == "mve":
        model = MPNN(mp, cnn.NormAggregation(), cnn.MveFFN(input_dim=16))
    else:
        model = MPNN(mp, cnn.AttentiveAggregation(output_size=16), cnn.RegressionFFN(input_dim=16))
    path = _save(model, tmp_path / f"{what}.pt", ["y"])
    with pytest.raises(CheckpointError, match=match):
        load_chemprop_model(path)


def test_not_a_torch_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "legacy.pt"
    bad.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(CheckpointError, match="not a torch.save zip archive"):
        load_chemprop_model(bad)
