"""Checkpoints: round trip, strict loading, corrupt files, malicious pickles, lazy torch."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file  # noqa: E402

from edgemp.data.synthetic import SYNTH_EDGE_FEATURES, SYNTH_NODE_FEATURES, synthetic_graphs  # noqa: E402
from edgemp.errors import CheckpointError  # noqa: E402
from edgemp.graph import collate  # noqa: E402
from edgemp.models.checkpoint import (  # noqa: E402
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_sha256,
    load_checkpoint,
    load_state_dict_safely,
    read_config,
    save_checkpoint,
)
from edgemp.models.config import EDGE_FAMILIES, FAMILIES, ModelConfig  # noqa: E402
from edgemp.models.net import GraphNet  # noqa: E402


def _model(family: str = "mpnn", **kw) -> GraphNet:
    torch.manual_seed(0)
    cfg = ModelConfig(
        family=family, task="regression", node_features=SYNTH_NODE_FEATURES,
        edge_features=SYNTH_EDGE_FEATURES if family in EDGE_FAMILIES else 0, hidden=16, num_rounds=2,
        target_mean=(1.5,), target_std=(0.5,), **kw,
    )
    return GraphNet(cfg).eval()


def _outputs(model: GraphNet) -> torch.Tensor:
    b = collate(synthetic_graphs(5, seed=1, max_nodes=10))
    with torch.no_grad():
        return model(
            torch.from_numpy(b.x), torch.from_numpy(b.edge_index), torch.from_numpy(b.edge_attr),
            torch.from_numpy(b.node_graph), b.num_graphs,
        )[model.output_name]


@pytest.fixture
def ckpt(tmp_path):
    model = _model()
    save_checkpoint(model, tmp_path / "ckpt", extra={"epochs_run": 3})
    return tmp_path / "ckpt", model


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_gives_identical_outputs(family, tmp_path):
    model = _model(family)
    d = save_checkpoint(model, tmp_path / family)
    loaded = load_checkpoint(d)
    assert loaded.cfg == model.cfg
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_config_json_carries_spec_and_training_summary(ckpt):
    d, model = ckpt
    config = json.loads((d / CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    assert config["training"] == {"epochs_run": 3}
    assert config["spec"]["node_features"] == SYNTH_NODE_FEATURES
    assert config["model"]["target_mean"] == [1.5]
    assert read_config(d) == model.cfg
    assert len(checkpoint_sha256(d)) == 64


def _rewrite_weights(d, change) -> None:
    state = load_file(str(d / WEIGHTS_FILE))
    change(state)
    save_file(state, str(d / WEIGHTS_FILE))


def test_extra_key_is_refused(ckpt):
    d, _ = ckpt
    _rewrite_weights(d, lambda s: s.__setitem__("surprise.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected \['surprise.weight'\]"):
        load_checkpoint(d)


def test_missing_key_is_refused(ckpt):
    d, _ = ckpt
    _rewrite_weights(d, lambda s: s.pop("encoder.weight"))
    with pytest.raises(CheckpointError, match=r"missing \['encoder.weight'\]"):
        load_checkpoint(d)


def test_wrong_shape_is_refused(ckpt):
    d, _ = ckpt
    _rewrite_weights(d, lambda s: s.__setitem__("encoder.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"'encoder.bias' has shape \[3\] but the model expects \[16\]"):
        load_checkpoint(d)


def test_config_for_another_model_is_refused(ckpt):
    d, _ = ckpt
    config = json.loads((d / CONFIG_FILE).read_text())
    config["model"]["hidden"] = 32
    (d / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(d)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"family": "gat", "heads": 0}, "heads must be >= 1, got 0"),
        ({"hidden": "8"}, "hidden must be an integer, got '8'"),
        ({"hidden": 8.5}, "hidden must be an integer, got 8.5"),
        ({"hidden": True}, "hidden must be an integer, got True"),
        ({"target_mean": None}, "target_mean must be a list, got NoneType"),
        ({"target_mean": ["x"]}, "target_mean must hold finite numbers"),
        ({"target_std": [1.0, 2.0, 3.0]}, "target_std has 3 entries but out_dim is 1"),
        ({"target_std": [0.0]}, "target_std must be > 0"),
        ({"node_features": 10**12}, "node_features must be <= 65536, got 1000000000000"),
        ({"num_rounds": 10**9}, "num_rounds must be <= 64, got 1000000000"),
    ],
)
def test_config_values_are_checked_before_building(ckpt, fields, match):
    """Each bad value is one CheckpointError naming the field, never a traceback, hang or allocation."""
    d, _ = ckpt
    config = json.loads((d / CONFIG_FILE).read_text())
    config["model"].update(fields)
    (d / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"invalid model config: {re.escape(match)}"):
        load_checkpoint(d)


def test_config_bigger_than_its_weights_allocates_nothing(ckpt, monkeypatch):
    """hidden=8192 passes the caps, but an MPNN that wide holds 2 * 8192**3 edge-network weights (4 TB):
    the config is compared with the weights on the meta device before anything real is built."""
    import edgemp.models.checkpoint as checkpoint

    d, _ = ckpt
    config = json.loads((d / CONFIG_FILE).read_text())
    config["model"]["hidden"] = 8192
    (d / CONFIG_FILE).write_text(json.dumps(config))
    real_build = checkpoint.build_model

    def shapes_only(cfg):
        assert torch.empty(0).device.type == "meta", "the model was built for real before the weights were checked"
        return real_build(cfg)

    monkeypatch.setattr(checkpoint, "build_model", shapes_only)
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(d)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, r"config.json: not valid JSON \(nested too deeply\)"),
        ('{"format_version": ' + "1" * 5000 + "}", "config.json: not valid JSON"),
        ("[1, 2]", "no 'model' section"),
        ('{"format_version": 99, "model": {}}', "format version 99"),
        ('{"format_version": 1, "model": {"family": "gin"}}', "invalid model config"),
        ('{"format_version": 1, "model": {"family": "transformer", "task": "regression", '
         '"node_features": 3, "edge_features": 0}}', "could not resolve family"),
    ],
)
def test_corrupted_config_json(ckpt, text, match):
    d, _ = ckpt
    (d / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(d)


def test_missing_directory_and_files(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "empty")
    d, _ = ckpt
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(d)


def test_truncated_safetensors_is_refused(ckpt):
    d, _ = ckpt
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(d)


# -- unsafe pickles ------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    # Proves the exploit used below really executes code when loaded the unsafe way.
    marker = tmp_path / "pwned-by-plain-pickle"
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    payload = {"encoder.weight": torch.zeros(2, 2), "evil": _Exploit(marker)}
    if how == "torch.save":
        torch.save(payload, str(path))
    else:
        with path.open("wb") as fh:
            pickle.dump(_Exploit(marker), fh)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict_safely(path)
    assert not marker.exists()


def test_plain_torch_state_dict_loads(tmp_path):
    model = _model("gin")
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), str(path))
    state = load_state_dict_safely(path)
    assert set(state) == set(model.state_dict())


def test_non_tensor_weights_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"a": 1}, str(path))
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_state_dict_safely(path)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError):
        load_state_dict_safely(tmp_path / "garbage.pt")


# -- the CLI stays light -------------------------------------------------------------

_HELP_PROBE = """
import sys
from edgemp.cli.main import cli
for args in ([{args}],):
    try:
        cli(args, prog_name="edgemp")
    except SystemExit as e:
        assert e.code == 0, e.code
heavy = sorted(m for m in ("torch", "safetensors", "onnx", "tensorrt") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", ["'--help'", "'train', '--help'", "'evaluate', '--help'"])
def test_cli_help_does_not_import_torch(args):
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE.format(args=args)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: edgemp" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout


def test_library_train_module_is_not_imported_by_cli():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, edgemp.cli.main; print('edgemp.train' in sys.modules)"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_outputs_are_finite(ckpt):
    d, model = ckpt
    assert np.all(np.isfinite(_outputs(load_checkpoint(d)).numpy()))
