"""Datasets: packaged solubility set, SMILES featurisation, CSV conversion, synthetic graphs, data CLI."""
from __future__ import annotations

import importlib.util
import sys
from importlib import resources

import numpy as np
import pytest
from click.testing import CliRunner

from edgemp.cli.main import cli
from edgemp.data.featurize import EDGE_FEATURES, NODE_FEATURES, InvalidSmilesError, mol_to_graph
from edgemp.data.solubility import featurize_csv, load_solubility
from edgemp.data.synthetic import SYNTH_EDGE_FEATURES, SYNTH_NODE_FEATURES, synthetic_graphs
from edgemp.errors import EdgempError, MissingExtraError
from edgemp.graph import collate, validate_graph
from edgemp.graphio import read_graphs

# Synthetic graphs and the missing-rdkit path run everywhere; molecule tests need rdkit.
needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="rdkit not installed")


@pytest.fixture(scope="module")
def train_graphs():
    pytest.importorskip("rdkit")
    return load_solubility("train")


def _edge_set(g) -> set[tuple[int, int]]:
    return set(map(tuple, g.edge_index.T.tolist()))


def test_packaged_csv_is_found():
    text = resources.files("edgemp.data").joinpath("solubility.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "smiles,logS,split"


def test_solubility_split_sizes(train_graphs):
    assert len(train_graphs) == 1025
    assert len(load_solubility("test")) == 257
    with pytest.raises(EdgempError, match="split"):
        load_solubility("valid")


def test_solubility_widths_and_targets(train_graphs):
    for i, g in enumerate(train_graphs):
        validate_graph(g, i, node_features=NODE_FEATURES, edge_features=EDGE_FEATURES)
        assert g.y.dtype == np.float32 and g.y.shape == (1,)
    ys = np.array([g.y[0] for g in train_graphs])
    assert -13 < ys.min() < ys.max() < 3
    b = collate(train_graphs)
    assert b.x.shape[1] == NODE_FEATURES and b.edge_attr.shape[1] == EDGE_FEATURES


def test_every_bond_in_both_directions(train_graphs):
    for g in train_graphs[:200]:
        edges = _edge_set(g)
        assert len(edges) == g.num_edges  # no duplicates
        assert all((j, i) in edges for i, j in edges)
        assert g.num_edges % 2 == 0


@needs_rdkit
def test_featurize_benzene_and_reverse_edge_attrs():
    g = mol_to_graph("c1ccccc1O")
    assert g.x.shape == (7, NODE_FEATURES)
    assert g.edge_index.shape == (2, 14) and g.edge_index.dtype == np.int64
    # edges 2k and 2k+1 are the two directions of one bond and share features
    np.testing.assert_array_equal(g.edge_attr[0::2], g.edge_attr[1::2])
    np.testing.assert_array_equal(g.edge_index[:, 0::2], g.edge_index[::-1, 1::2])


@needs_rdkit
def test_single_atom_has_no_edges():
    g = mol_to_graph("C", 1.5)
    assert g.x.shape == (1, NODE_FEATURES)
    assert g.edge_index.shape == (2, 0) and g.edge_index.dtype == np.int64
    assert g.edge_attr.shape == (0, EDGE_FEATURES)
    validate_graph(g, node_features=NODE_FEATURES, edge_features=EDGE_FEATURES)


@needs_rdkit
@pytest.mark.parametrize("smiles", ["C1CC", "not a smiles", ""])
def test_invalid_smiles(smiles):
    with pytest.raises(InvalidSmilesError):
        mol_to_graph(smiles)


def test_missing_rdkit_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(MissingExtraError, match=r"edgemp\[chem\]"):
        mol_to_graph("CCO")


def test_cli_missing_rdkit_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    r = CliRunner().invoke(cli, ["data", "solubility", "-o", str(tmp_path / "s.jsonl")])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and "edgemp[chem]" in r.output


def _write_csv(tmp_path):
    p = tmp_path / "mols.csv"
    p.write_text("name,smi,act\na,CCO,1.0\nb,C1CC,2.0\nc,c1ccccc1,x\nd,,3\ne,[Na+].[Cl-],-0.5\n")
    return p


@needs_rdkit
def test_featurize_csv_skips_bad_rows(tmp_path):
    graphs, skipped = featurize_csv(_write_csv(tmp_path), "smi", "act")
    assert len(graphs) == 2
    assert [row for row, _ in skipped] == [2, 3, 4]
    assert "SMILES" in skipped[0][1] and "non-numeric" in skipped[1][1]
    assert graphs[1].num_edges == 0 and graphs[1].y.tolist() == [-0.5]


@needs_rdkit
def test_featurize_csv_missing_column(tmp_path):
    with pytest.raises(EdgempError, match=r"'smiles'.*available columns: name, smi, act"):
        featurize_csv(_write_csv(tmp_path), "smiles", "act")


@needs_rdkit
def test_cli_csv_reports_skipped_rows(tmp_path):
    out = tmp_path / "m.jsonl"
    r = CliRunner().invoke(cli, ["data", "csv", str(_write_csv(tmp_path)), "--smiles-column", "smi",
                                 "--target-column", "act", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "row 2: invalid SMILES" in r.output and "row 3: non-numeric target" in r.output
    assert "converted 2 molecules, skipped 3 rows" in r.output
    assert len(read_graphs(out)) == 2


@needs_rdkit
def test_cli_csv_missing_column_is_one_line_error(tmp_path):
    r = CliRunner().invoke(cli, ["data", "csv", str(_write_csv(tmp_path)), "--smiles-column", "SMILES",
                                 "-o", str(tmp_path / "m.jsonl")])
    assert r.exit_code == 1
    assert "no column 'SMILES'" in r.output and "Traceback" not in r.output


@needs_rdkit
def test_cli_csv_no_molecules_fails(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("smiles\nC1CC\n")
    r = CliRunner().invoke(cli, ["data", "csv", str(p), "-o", str(tmp_path / "m.jsonl")])
    assert r.exit_code == 1 and "no molecule could be converted" in r.output


@needs_rdkit
@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_cli_solubility_round_trip(tmp_path, suffix):
    out = tmp_path / f"sol{suffix}"
    r = CliRunner().invoke(cli, ["data", "solubility", "--split", "test", "-o", str(out)])
    assert r.exit_code == 0, r.output
    back = read_graphs(out)
    ref = load_solubility("test")
    assert len(back) == len(ref) == 257
    for a, b in zip(back[:50], ref[:50]):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.edge_index, b.edge_index)
        np.testing.assert_allclose(a.y, b.y)


def test_synthetic_deterministic_and_mixed():
    a, b = synthetic_graphs(60, seed=3), synthetic_graphs(60, seed=3)
    for ga, gb in zip(a, b):
        np.testing.assert_array_equal(ga.x, gb.x)
        np.testing.assert_array_equal(ga.edge_index, gb.edge_index)
        np.testing.assert_array_equal(ga.y, gb.y)
    assert not np.array_equal(synthetic_graphs(1, seed=4)[0].x, a[0].x)
    sizes = {g.num_nodes for g in a}
    assert min(sizes) >= 5 and max(sizes) <= 30 and len(sizes) > 10
    assert any(g.num_edges == 0 for g in a)
    for i, g in enumerate(a):
        validate_graph(g, i, node_features=SYNTH_NODE_FEATURES, edge_features=SYNTH_EDGE_FEATURES)
        assert g.y.dtype == np.float32 and g.y.shape == (1,)
        assert all((j, k) in _edge_set(g) for k, j in _edge_set(g))
    ys = np.array([g.y[0] for g in synthetic_graphs(500, seed=0)])
    assert 0.3 < ys.std() < 3 and abs(ys.mean()) < 1


def test_synthetic_target_needs_structure():
    """A linear model on pooled node features (no edges) explains little of y."""
    graphs = synthetic_graphs(800, seed=1)
    X = np.array([np.concatenate([g.x.mean(0), [g.num_nodes / 30, 1.0]]) for g in graphs])
    y = np.array([g.y[0] for g in graphs])
    w = np.linalg.lstsq(X[:600], y[:600], rcond=None)[0]
    r2 = 1 - np.var(y[600:] - X[600:] @ w) / np.var(y[600:])
    assert r2 < 0.3


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_cli_synthetic_round_trip(tmp_path, suffix):
    out = tmp_path / f"syn{suffix}"
    r = CliRunner().invoke(cli, ["data", "synthetic", "--num-graphs", "40", "--seed", "7", "-o", str(out)])
    assert r.exit_code == 0, r.output
    back, ref = read_graphs(out), synthetic_graphs(40, seed=7)
    assert len(back) == 40
    for a, b in zip(back, ref):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.edge_index, b.edge_index)
        np.testing.assert_array_equal(a.edge_attr.reshape(-1, SYNTH_EDGE_FEATURES), b.edge_attr)
        np.testing.assert_array_equal(a.y, b.y)


def test_edgeless_graph_from_jsonl_fits_edge_feature_models(tmp_path):
    """JSON keeps no width for an empty edge_attr: [0, 0] must validate against any Fe."""
    import numpy as np

    from edgemp.graph import Graph, collate, validate_graph
    from edgemp.graphio import read_graphs, write_jsonl

    g0 = Graph(np.ones((2, 3), np.float32), np.zeros((2, 0), np.int64), np.zeros((0, 4), np.float32))
    g1 = Graph(np.ones((2, 3), np.float32), np.array([[0], [1]]), np.ones((1, 4), np.float32))
    write_jsonl([g0, g1], tmp_path / "g.jsonl")
    back = read_graphs(tmp_path / "g.jsonl")
    for i, g in enumerate(back):
        validate_graph(g, i, node_features=3, edge_features=4)
    assert collate(back).edge_attr.shape == (1, 4)
