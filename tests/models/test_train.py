"""Training and evaluation: library API and the ``edgemp train`` / ``edgemp evaluate`` commands."""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from edgemp.cli import train_cmds  # noqa: E402
from edgemp.cli.main import cli  # noqa: E402
from edgemp.data.synthetic import SYNTH_EDGE_FEATURES, SYNTH_NODE_FEATURES, synthetic_graphs  # noqa: E402
from edgemp.errors import EdgempError, GraphValidationError  # noqa: E402
from edgemp.graph import Graph  # noqa: E402
from edgemp.graphio import write_graphs  # noqa: E402
from edgemp.metrics import MetricResult  # noqa: E402
from edgemp.models.checkpoint import load_checkpoint, read_config  # noqa: E402
from edgemp.models.config import FAMILIES  # noqa: E402
from edgemp.spec import TASKS  # noqa: E402
from edgemp.train import TrainConfig, TrainConfigError, evaluate_checkpoint, evaluate_model, predict, train  # noqa: E402

QUICK = {"hidden": 16, "rounds": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def graphs() -> list[Graph]:
    return synthetic_graphs(64, seed=0, max_nodes=14)


@pytest.fixture
def train_file(tmp_path, graphs):
    path = tmp_path / "train.jsonl"
    write_graphs(graphs, path)
    return path


def _without_edges(graphs: list[Graph]) -> list[Graph]:
    return [Graph(x=g.x, edge_index=g.edge_index, y=g.y) for g in graphs]


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


# -- CLI ---------------------------------------------------------------------------


def test_cli_train_writes_a_loadable_checkpoint_and_evaluate_reports(tmp_path, train_file, graphs):
    out = tmp_path / "ckpt"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--family", "gin", "--train", str(train_file), "--epochs", "2",
                                 "--hidden", "16", "--rounds", "2", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "validation rmse" in result.stdout and str(out) in result.stdout
    model = load_checkpoint(out)
    assert model.cfg.family == "gin" and model.cfg.hidden == 16 and model.cfg.num_rounds == 2
    assert model.cfg.node_features == SYNTH_NODE_FEATURES and model.cfg.edge_features == 0
    summary = json.loads((out / "config.json").read_text())["training"]
    assert summary["train_file"] == "train.jsonl"
    assert summary["epochs_run"] == 2 and summary["metric_name"] == "rmse"
    assert summary["num_train_graphs"] + summary["num_val_graphs"] == 64

    result = runner.invoke(cli, ["evaluate", str(out), str(train_file), "--json"])
    assert result.exit_code == 0, result.output
    metric = json.loads(result.stdout)
    assert set(metric) == {"metric_name", "value", "num_graphs"}
    assert metric["metric_name"] == "rmse" and metric["num_graphs"] == 64
    assert metric["value"] == pytest.approx(evaluate_checkpoint(out, graphs).value, rel=1e-6)

    result = runner.invoke(cli, ["evaluate", str(out), str(train_file)])
    assert result.exit_code == 0 and result.stdout.startswith("rmse ") and "64 graphs" in result.stdout


def test_cli_train_with_val_file_and_mpnn(tmp_path, graphs):
    tr, va = tmp_path / "tr.npz", tmp_path / "va.jsonl"
    write_graphs(graphs[:48], tr)
    write_graphs(graphs[48:], va)
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["train", "--family", "mpnn", "--train", str(tr), "--val", str(va),
                                      "--epochs", "1", "--hidden", "8", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    cfg = read_config(out)
    assert cfg.edge_features == SYNTH_EDGE_FEATURES
    summary = json.loads((out / "config.json").read_text())["training"]
    assert summary["num_train_graphs"] == 48 and summary["num_val_graphs"] == 16 and summary["val_file"] == "va.jsonl"


@pytest.mark.parametrize("family", ["gine", "mpnn"])
def test_edge_family_without_edge_features_is_one_line_error(tmp_path, graphs, family):
    path = tmp_path / "noedges.jsonl"
    write_graphs(_without_edges(graphs[:8]), path)
    result = CliRunner().invoke(cli, ["train", "--family", family, "--train", str(path), "--epochs", "1",
                                      "-o", str(tmp_path / "ckpt")])
    _one_line_error(result, "needs edge features")
    assert not (tmp_path / "ckpt").exists()


def test_missing_train_file_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--family", "gin", "--train", str(tmp_path / "nope.jsonl"),
                                      "-o", str(tmp_path / "ckpt")])
    _one_line_error(result, "does not exist")


def test_evaluate_missing_model_is_one_line_error(tmp_path, train_file):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "nope"), str(train_file)])
    _one_line_error(result, "does not exist")
    (tmp_path / "model.pt").write_bytes(b"")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "model.pt"), str(train_file)])
    _one_line_error(result, "unknown model file type")


def test_evaluate_onnx_goes_through_the_runtime(tmp_path, train_file, monkeypatch):
    calls = []

    def fake_evaluate_onnx(model_path, graphs):
        calls.append((model_path, len(graphs)))
        return MetricResult("accuracy", 0.75, len(graphs), True)

    fake = types.ModuleType("edgemp.runtime.evaluate")
    fake.evaluate_onnx = fake_evaluate_onnx
    monkeypatch.setitem(sys.modules, "edgemp.runtime.evaluate", fake)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    result = CliRunner().invoke(cli, ["evaluate", str(model), str(train_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"metric_name": "accuracy", "value": 0.75, "num_graphs": 64}
    assert calls == [(model, 64)]


def test_cli_choices_and_defaults_match_the_library():
    assert train_cmds.FAMILY_CHOICES == FAMILIES
    assert train_cmds.TASK_CHOICES == TASKS
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    params = {p.name: p.default for p in train_cmds.train_cmd.params}
    for name in ("epochs", "hidden", "rounds", "lr", "batch_size", "patience", "seed"):
        assert params[name] == defaults[name], name


# -- library -------------------------------------------------------------------------


def test_training_learns(graphs):
    cfg = TrainConfig(family="gin", epochs=20, patience=100, lr=3e-3, seed=1, **QUICK)
    model, history = train(graphs, graphs, cfg, progress=False)
    assert history.epochs_run == 20 and not history.stopped_early
    first, last = history.epochs[0], history.epochs[-1]
    assert last.train_loss < 0.7 * first.train_loss, [e.train_loss for e in history.epochs]
    assert history.best_val_metric < first.val_metric
    # The returned weights are the best epoch's.
    assert evaluate_model(model, graphs).value == pytest.approx(history.best_val_metric, rel=1e-5)


def test_training_is_deterministic_for_a_seed(graphs):
    cfg = TrainConfig(family="sage", epochs=2, **QUICK)
    a, ha = train(graphs, None, cfg, progress=False)
    b, hb = train(graphs, None, cfg, progress=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert [e.train_loss for e in ha.epochs] == [e.train_loss for e in hb.epochs]
    c, _ = train(graphs, None, dataclasses.replace(cfg, seed=1), progress=False)
    assert not torch.equal(a.state_dict()["encoder.weight"], c.state_dict()["encoder.weight"])


def test_holdout_and_target_normalisation(graphs):
    model, history = train(graphs, None, TrainConfig(family="gcn", epochs=1, **QUICK), progress=False)
    assert history.num_val_graphs == 6 and history.num_train_graphs == 58
    ys = np.array([float(g.y[0]) for g in graphs])
    assert abs(model.cfg.target_mean[0] - ys.mean()) < 0.5 * ys.std()
    assert model.cfg.target_std[0] > 0


def test_early_stopping_restores_best(graphs):
    cfg = TrainConfig(family="gin", epochs=30, patience=1, lr=0.05, **QUICK)
    model, history = train(graphs, graphs[:16], cfg, progress=False)
    assert history.stopped_early and history.epochs_run < 30
    assert history.best_val_metric == min(e.val_metric for e in history.epochs)
    assert evaluate_model(model, graphs[:16]).value == pytest.approx(history.best_val_metric, rel=1e-5)


def test_graph_classification(graphs):
    labelled = [Graph(g.x, g.edge_index, g.edge_attr, np.array([int(g.num_nodes > 9) + int(g.num_edges > 20)], np.float32))
                for g in graphs]
    model, history = train(labelled, None, TrainConfig(family="gat", task="classification", epochs=2, **QUICK),
                           progress=False)
    assert model.cfg.out_dim == 3 and model.output_name == "logits"
    assert history.metric_name == "accuracy" and history.higher_is_better
    assert 0.0 <= evaluate_model(model, labelled).value <= 1.0


@pytest.mark.parametrize("task", ["node_regression", "node_classification"])
def test_node_level_tasks(graphs, task):
    node_graphs = [Graph(g.x, g.edge_index, g.edge_attr, g.x[:, :1].copy() if task == "node_regression"
                         else np.argmax(g.x[:, :4], axis=1).astype(np.float32)) for g in graphs]
    model, history = train(node_graphs, None, TrainConfig(family="ggnn", task=task, epochs=2, **QUICK),
                           progress=False)
    preds = predict(model, node_graphs[:3])
    assert [p.shape[0] for p in preds] == [g.num_nodes for g in node_graphs[:3]]
    assert model.cfg.out_dim == (1 if task == "node_regression" else 4)


def test_targets_are_required(graphs):
    no_y = [Graph(g.x, g.edge_index, g.edge_attr) for g in graphs[:4]]
    with pytest.raises(EdgempError, match="training graph 8 has no target"):
        train(graphs[:8] + no_y, None, TrainConfig(family="gin", epochs=1, **QUICK), progress=False)


def test_invalid_graphs_are_rejected(graphs):
    bad = Graph(graphs[0].x, np.array([[0], [99]], np.int64), None, graphs[0].y)
    with pytest.raises(GraphValidationError, match="edge_index holds node 99"):
        train([bad] + _without_edges(graphs[1:4]), graphs[:2], TrainConfig(family="gin", epochs=1, **QUICK), progress=False)
    wide = Graph(np.zeros((3, SYNTH_NODE_FEATURES + 1), np.float32), np.zeros((2, 0), np.int64), None, graphs[0].y)
    with pytest.raises(GraphValidationError, match="validation graph 0: x has 9 features per node"):
        train(_without_edges(graphs[:4]), [wide], TrainConfig(family="gin", epochs=1, **QUICK), progress=False)


def test_bad_class_labels(graphs):
    frac = [Graph(g.x, g.edge_index, g.edge_attr, np.array([0.5], np.float32)) for g in graphs[:4]]
    with pytest.raises(EdgempError, match="non-negative integers"):
        train(frac, None, TrainConfig(family="gin", task="classification", epochs=1, **QUICK), progress=False)


def test_huge_class_label_is_refused_before_the_head_is_built(graphs):
    """Classes = largest label + 1: a label of 1e12 would ask for a 16 TB output layer."""
    from edgemp.train.data import target_rows

    huge = Graph(graphs[0].x, graphs[0].edge_index, graphs[0].edge_attr, np.array([1e12]))
    with pytest.raises(EdgempError, match=r"training graph 3: class label 1e\+12 is too large; labels must be below 65536"):
        target_rows(huge, 3, "classification", "training")
    assert target_rows(huge, 3, "regression", "training").tolist() == [[1e12]]  # a regression target is fine


def test_cli_train_negative_seed_is_a_usage_error(tmp_path, train_file):
    result = CliRunner().invoke(cli, ["train", "--family", "gin", "--train", str(train_file), "--epochs", "1",
                                      "--seed", "-1", "-o", str(tmp_path / "ckpt")])
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output, result.output
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "kw,match",
    [({"family": "rnn"}, "could not resolve family 'rnn'"), ({"family": "gin", "epochs": 0}, "epochs"),
     ({"family": "gin", "lr": -1.0}, "lr"), ({"family": "gat", "hidden": 10}, "divisible"),
     ({"family": "gin", "seed": -1}, "seed must be from 0")],
)
def test_invalid_train_config(kw, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**kw)


def test_evaluate_checkpoint_checks_widths(tmp_path, graphs):
    from edgemp.models.checkpoint import save_checkpoint

    model, _ = train(graphs, None, TrainConfig(family="gine", epochs=1, **QUICK), progress=False)
    save_checkpoint(model, tmp_path / "ckpt")
    result = evaluate_checkpoint(tmp_path / "ckpt", graphs)
    assert result.metric_name == "rmse" and result.num_graphs == 64
    with pytest.raises(GraphValidationError, match="edge_attr is missing"):
        evaluate_checkpoint(tmp_path / "ckpt", _without_edges(graphs))
