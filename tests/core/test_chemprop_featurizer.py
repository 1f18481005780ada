"""edgemp.chem's chemprop featurizers equal chemprop's own, array for array, on >1,000 molecules.

The molecules: edgemp's packaged solubility set (1,282 drug-like and small organics) plus
every fourth entry of RDKit's NCI sample (charges, salts, metals, stereo, isotopes, odd
valences), plus hand-picked edge cases. chemprop is the reference; it is only imported here.
"""
from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
chemprop_featurizers = pytest.importorskip("chemprop.featurizers")

from edgemp.chem import FEATURIZERS, featurize_smiles, get_featurizer  # noqa: E402
from edgemp.chem.chemprop_features import ATOM_SCHEMES  # noqa: E402
from edgemp.errors import EdgempError  # noqa: E402

EDGE_CASES = [
    "C", "[H][H]", "[2H]C([2H])([2H])O", "[Na+].[Cl-]", "C[N+](C)(C)C", "[O-][N+](=O)c1ccccc1",
    "C/C=C/C", r"C/C=C\C", "F/C=C/F", "C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
    "c1ccc2[nH]ccc2c1", "c1ccsc1", "c1cc[se]c1", "B(O)(O)c1ccccc1", "[Si](C)(C)(C)C", "P(=O)(O)(O)O",
    "S(=O)(=O)(O)O", "C#N", "C=C=C", "[Fe+2]", "[Cu]", "[U]", "[Xe]", "ICI", "BrC(Br)Br", "[CH3]", "[CH2]",
    "C1CC1", "C12C3C4C1C5C2C3C45", "CC(C)(C)c1ccc(O)cc1", "O=C1NC(=O)c2ccccc12", "[O-]C(=O)C", "[NH4+]",
    "Cl[Pt](Cl)([NH3])[NH3]", "C[S+](C)C", "[SiH4]", "c1ccccc1-c1ccccc1", "OC(=O)C(F)(F)F", "N#[N+][O-]",
]


def _molecules() -> list[str]:
    root = Path(__file__).resolve().parents[2]
    with open(root / "edgemp" / "data" / "solubility.csv", newline="") as fh:
        smiles = [row["smiles"] for row in csv.DictReader(fh)]
    from rdkit import RDConfig

    nci = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if nci.is_file():
        smiles += [line.split()[0] for line in nci.read_text().splitlines()[::4] if line.strip()]
    return smiles + EDGE_CASES


@pytest.fixture(scope="module")
def molecules() -> list[str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    smiles = [s for s in _molecules() if Chem.MolFromSmiles(s) is not None]
    assert len(smiles) >= 1000
    return smiles


@pytest.mark.parametrize("scheme", sorted(ATOM_SCHEMES))
def test_features_equal_chemprops_on_a_thousand_molecules(molecules, scheme):
    from chemprop.featurizers import MultiHotAtomFeaturizer, SimpleMoleculeMolGraphFeaturizer
    from chemprop.utils import make_mol

    theirs = SimpleMoleculeMolGraphFeaturizer(atom_featurizer=getattr(MultiHotAtomFeaturizer, scheme)())
    ours = get_featurizer(f"chemprop-{scheme}/1")
    assert ours.node_features == theirs.atom_fdim and ours.edge_features == theirs.bond_fdim
    if scheme != "v2":  # the default gets every molecule; the other schemes share its code, a third will do
        molecules = molecules[::3]
    graphs = featurize_smiles(ours, molecules)
    for smi, g in zip(molecules, graphs):
        assert not isinstance(g, EdgempError), (smi, g)
        ref = theirs(make_mol(smi, keep_h=False, add_h=False))
        np.testing.assert_array_equal(g.x, ref.V.astype(np.float32), err_msg=smi)
        np.testing.assert_array_equal(g.edge_attr, ref.E.astype(np.float32), err_msg=smi)
        np.testing.assert_array_equal(g.edge_index, ref.edge_index, err_msg=smi)
        # chemprop's reverse-edge map is exactly the pairing the exported D-MPNN relies on
        np.testing.assert_array_equal(np.arange(g.num_edges) ^ 1, ref.rev_edge_index, err_msg=smi)
        assert g.x.dtype == np.float32 and g.edge_index.dtype == np.int64


def test_invalid_smiles_give_per_item_errors_naming_them():
    f = get_featurizer("chemprop-v2/1")
    out = featurize_smiles(f, ["CCO", "C1CC", "", "not a smiles", 7, "c1ccccc1"])
    assert [isinstance(o, EdgempError) for o in out] == [False, True, True, True, True, False]
    assert "C1CC" in str(out[1]) and "empty" in str(out[2]) and "string" in str(out[4])


def test_registry_names_every_featurizer_and_rejects_unknown_ones():
    assert {"edgemp-mol/1", "chemprop-v2/1", "chemprop-v1/1", "chemprop-organic/1"} <= set(FEATURIZERS)
    assert get_featurizer("chemprop-v2/1").node_features == 72
    assert get_featurizer("chemprop-v1/1").node_features == 133
    with pytest.raises(EdgempError, match="chemprop-v2/1"):
        get_featurizer("chemprop-v3/1")


def test_featurizers_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; from edgemp.chem import get_featurizer; get_featurizer('chemprop-v2/1').featurize('CCO'); "
            "bad = [m for m in ('torch', 'chemprop', 'onnx') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_edgemp_data_checkpoints_record_their_featurizer_and_take_smiles(tmp_path):
    """`edgemp data csv` → train → export: the model names edgemp-mol/1 and answers SMILES as it answers graphs."""
    pytest.importorskip("torch")
    import json

    from click.testing import CliRunner

    from edgemp.cli.main import cli

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "OC(=O)c1ccccc1", "CCCCCCO"] * 3
    (tmp_path / "mols.csv").write_text("smiles,y\n" + "".join(f"{s},{i % 3}\n" for i, s in enumerate(smiles)))
    run = CliRunner()
    for args in (["data", "csv", "mols.csv", "--target-column", "y", "-o", "g.jsonl"],
                 ["data", "csv", "mols.csv", "--target-column", "y", "-o", "g.npz"],
                 ["train", "--family", "gin", "--train", "g.npz", "-o", "ck", "--epochs", "1", "--hidden", "8",
                  "--no-progress"],
                 ["export", "ck", "-o", "m.onnx"],
                 ["predict", "m.onnx", "mols.csv", "--smiles-column", "smiles", "-o", "from_smiles.jsonl"],
                 ["predict", "m.onnx", "g.jsonl", "-o", "from_graphs.jsonl"]):
        with _chdir(tmp_path):
            r = run.invoke(cli, args)
        assert r.exit_code == 0, (args, r.output)
    from edgemp.graphio import read_featurizer

    assert read_featurizer(tmp_path / "g.jsonl") == read_featurizer(tmp_path / "g.npz") == "edgemp-mol/1"
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model"]["featurizer"] == "edgemp-mol/1"
    assert (tmp_path / "from_smiles.jsonl").read_text() == (tmp_path / "from_graphs.jsonl").read_text()


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
