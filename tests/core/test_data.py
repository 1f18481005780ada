"""Datasets: packaged solubility set, SMILES featurisation, CSV conversion, synthetic graphs, data CLI."""
from __future__ import annotations

import importlib.util
import re
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


def test_featurize_csv_non_utf8_header_is_an_edgemp_error(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"sm\xe9iles\nCCO\n")  # the header itself is Latin-1
    with pytest.raises(EdgempError, match=r"latin1.csv: not UTF-8 text"):
        featurize_csv(p)


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


def test_cli_synthetic_negative_seed_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(cli, ["data", "synthetic", "--num-graphs", "2", "--seed", "-1", "-o", str(tmp_path / "s.jsonl")])
    assert r.exit_code == 2 and "Invalid value for '--seed'" in r.output, r.output
    assert not (tmp_path / "s.jsonl").exists()


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


# -- graph files a user got wrong: one EdgempError naming the file, never a traceback -------------
DEEP = "[" * 100_000 + "]" * 100_000
GOOD_LINE = '{"x": [[1, 0]], "edge_index": [[], []]}\n'
BAD_JSONL = {
    "deep": (('{"x": ' + DEEP + ', "edge_index": [[], []]}\n').encode(),
             "g.jsonl:2: not valid JSON (nested too deeply)"),
    "huge_int": (('{"x": [[' + "9" * 5000 + ', 0]], "edge_index": [[], []]}\n').encode(),
                 "g.jsonl:2: not valid JSON"),
    "latin1": (b'{"x": [[1, 0]], "edge_index": [[], []], "id": "\xe9"}\n', "g.jsonl:2: not UTF-8 (byte 0xe9"),
    "syntax": (b'{"x": [[1, 0]],\n', "g.jsonl:2: not valid JSON (Expecting property name"),
    "bool_edges": (b'{"x": [[1, 0], [0, 1]], "edge_index": [[true], [false]]}\n', "edge_index must hold numbers, not"),
    "bool_among_edges": (b'{"x": [[1, 0], [0, 1], [1, 1]], "edge_index": [[true, 1], [0, 2]]}\n',
                         "g.jsonl:2: graph 1: edge_index must hold numbers, not true/false"),
    "bool_among_features": (b'{"x": [[1, false], [0, 1]], "edge_index": [[0], [1]]}\n',
                            "g.jsonl:2: graph 1: x must hold numbers, not true/false"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_malformed_jsonl_names_the_line(tmp_path, case):
    from edgemp.errors import GraphValidationError

    line, match = BAD_JSONL[case]
    path = tmp_path / "g.jsonl"
    path.write_bytes(GOOD_LINE.encode() + line)
    with pytest.raises(GraphValidationError, match=re.escape(match)):
        read_graphs(path)


def test_featurizer_of_a_deeply_nested_jsonl_is_an_edgemp_error(tmp_path):
    from edgemp.graphio import read_featurizer

    (tmp_path / "g.jsonl").write_text(DEEP + "\n")
    with pytest.raises(EdgempError, match="nested too deeply"):
        read_featurizer(tmp_path / "g.jsonl")


def _npz(path, **arrays):
    base = dict(x=np.ones((3, 2), np.float32), edge_index=np.array([[0, 1], [1, 2]]), graph_node_counts=[3],
                graph_edge_counts=[2])
    np.savez(path, **{**base, **arrays})
    return path


BAD_NPZ = {
    "object_x": (dict(x=np.array([object()], dtype=object)), "array 'x' cannot be read"),
    "complex_x": (dict(x=np.ones((3, 2), np.complex64) * 1j), "array 'x' has dtype complex64"),
    "string_x": (dict(x=np.array([["1", "2"]] * 3)), "array 'x' has dtype <U1"),
    "bool_edges": (dict(edge_index=np.array([[True], [False]]), graph_edge_counts=[1]),
                   "'edge_index' has dtype bool"),
    "float_counts": (dict(graph_node_counts=[3.0]), "'graph_node_counts' has dtype float64"),
    "y_without_sizes": (dict(y=np.ones(1, np.float32)), "'y' needs 'y_sizes' and 'y_shapes'"),
    "y_shape_too_big": (dict(y=np.ones(1, np.float32), y_sizes=[1], y_shapes=[[5, -1]]), "y_shapes row 0 is [5, -1]"),
    "y_shape_negative": (dict(y=np.ones(1, np.float32), y_sizes=[1], y_shapes=[[-2, -1]]), "y_shapes row 0"),
    "y_shape_huge": (dict(y=np.ones(0, np.float32), y_sizes=[0], y_shapes=np.array([[2**63 - 1, 0]])),
                     "y_shapes row 0"),
    "y_sizes_negative": (dict(y=np.ones(1, np.float32), y_sizes=[-1], y_shapes=[[-1, -1]]), "y_sizes holds -1"),
    "y_sizes_sum": (dict(y=np.ones(3, np.float32), y_sizes=[1], y_shapes=[[-1, -1]]), "y_sizes add up to 1"),
    "y_too_few": (dict(y=np.ones(1, np.float32), y_sizes=[1], y_shapes=[[-1, -1]], graph_node_counts=[1, 2],
                       graph_edge_counts=[0, 2]), "'y_sizes' has shape [1]; expected one entry per graph [2]"),
    "y_shapes_flat": (dict(y=np.ones(1, np.float32), y_sizes=[1], y_shapes=[1]), "'y_shapes' has shape [1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_malformed_npz_names_the_file_and_array(tmp_path, case):
    arrays, match = BAD_NPZ[case]
    path = _npz(tmp_path / "g.npz", **arrays)
    with pytest.raises(EdgempError, match=re.escape(f"{path}: ") + ".*" + re.escape(match)):
        read_graphs(path)


def test_truncated_or_single_array_npz_is_an_edgemp_error(tmp_path):
    whole = _npz(tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[:100])
    with pytest.raises(EdgempError, match="cannot read NPZ graph file .*cut.npz"):
        read_graphs(tmp_path / "cut.npz")
    with open(tmp_path / "one.npz", "wb") as fh:
        np.save(fh, np.ones(3))
    with pytest.raises(EdgempError, match="single .npy array"):
        read_graphs(tmp_path / "one.npz")


def test_npz_targets_of_each_rank_round_trip(tmp_path):
    from edgemp.graph import Graph
    from edgemp.graphio import write_npz

    x = np.ones((2, 3), np.float32)
    ei = np.zeros((2, 0), np.int64)
    ys = [np.float32(1.5), np.arange(3, dtype=np.float32), np.arange(4, dtype=np.float32).reshape(2, 2)]
    write_npz([Graph(x, ei, y=np.asarray(y)) for y in ys], tmp_path / "g.npz")
    back = read_graphs(tmp_path / "g.npz")
    for g, y in zip(back, ys):
        np.testing.assert_array_equal(g.y, y)
