"""The training loop: model dimensions from the data, epochs, early stopping on validation."""
from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgemp.errors import EdgempError
from edgemp.graph import Graph, validate_graph
from edgemp.models.config import EDGE_FAMILIES, ModelConfig
from edgemp.models.net import GraphNet
from edgemp.train.config import GRAD_CLIP_NORM, EpochRecord, TrainConfig, TrainHistory
from edgemp.train.data import Prepared, batch_inputs, edge_feature_width, is_classification, prepare, split_holdout
from edgemp.train.evaluation import metric

logger = logging.getLogger(__name__)


def _build_config(cfg: TrainConfig, train: Prepared, val: Prepared, node_features: int, edge_features: int) -> ModelConfig:
    all_targets = np.concatenate(train.targets + val.targets, axis=0)
    if is_classification(cfg.task):
        out_dim = int(all_targets.max()) + 1
        if out_dim < 2:
            logger.warning("every label is 0: the classifier has a single class")
        mean: tuple[float, ...] = ()
        std: tuple[float, ...] = ()
    else:
        out_dim = int(all_targets.shape[1])
        # Statistics from the training graphs only: the validation set stays unseen.
        t = np.concatenate(train.targets, axis=0).astype(np.float64)
        mu, sd = t.mean(axis=0), t.std(axis=0)
        sd = np.where(sd > 1e-8, sd, 1.0)  # a constant target: keep the scale, learn the offset
        mean, std = tuple(float(v) for v in mu), tuple(float(v) for v in sd)
    return ModelConfig(
        family=cfg.family,
        task=cfg.task,
        node_features=node_features,
        edge_features=edge_features,
        out_dim=out_dim,
        hidden=cfg.hidden,
        num_rounds=cfg.rounds,
        aggr=cfg.aggr,
        readout=cfg.readout,
        heads=cfg.heads,
        target_mean=mean,
        target_std=std,
    )


def _loss(model: GraphNet, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if is_classification(model.cfg.task):
        return F.cross_entropy(out, target.reshape(-1).long())
    # The model de-normalises its output; the loss is on normalised targets so every
    # target contributes on the same scale and the learning rate does not depend on units.
    return F.mse_loss((out - model.target_mean) / model.target_std, (target - model.target_mean) / model.target_std)


def _progress(epochs: int, enabled: bool):
    """A tqdm bar over epochs, or None (then each epoch is logged instead)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, desc="train", unit="epoch", leave=True)


def train(
    train_graphs: Sequence[Graph],
    val_graphs: Sequence[Graph] | None,
    cfg: TrainConfig,
    progress: bool = True,
) -> tuple[GraphNet, TrainHistory]:
    """Train a model on ``train_graphs``; return it with the best-validation weights.

    Model dimensions come from the data: node features from ``x``, edge features from
    ``edge_attr`` (0 when the graphs have none; ``gine``/``mpnn`` then refuse), the
    output width from the targets (classes = max label + 1). Without ``val_graphs``,
    10% of the training graphs (seeded) are held out for early stopping.
    """
    t0 = time.perf_counter()
    train_p, val_p, (node_features, edge_features) = _prepare_splits(train_graphs, val_graphs, cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GraphNet(_build_config(cfg, train_p, val_p, node_features, edge_features))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = None  # created after the first validation, when the metric's direction is known
    history = TrainHistory(metric_name="", higher_is_better=False,  # both set from the first validation
                           num_train_graphs=len(train_p.graphs), num_val_graphs=len(val_p.graphs))
    logger.info("training %s (%s, hidden %d, %d rounds) on %d graphs, validating on %d",
                cfg.family, cfg.task, cfg.hidden, cfg.rounds, len(train_p.graphs), len(val_p.graphs))
    best = _BestWeights()
    bar = _progress(cfg.epochs, progress)
    try:
        for epoch in range(1, cfg.epochs + 1):
            e0 = time.perf_counter()
            train_loss = _train_epoch(model, opt, train_p, rng.permutation(len(train_p.graphs)), cfg.batch_size)
            if not math.isfinite(train_loss):
                raise EdgempError(f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr")
            result = metric(model, val_p.graphs)
            history.metric_name, history.higher_is_better = result.metric_name, result.higher_is_better
            val = result.value
            history.epochs.append(EpochRecord(epoch, train_loss, val, time.perf_counter() - e0))
            if cfg.lr_decay < 1.0:
                if sched is None:
                    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                        opt, mode="max" if history.higher_is_better else "min", factor=cfg.lr_decay,
                        patience=max(1, cfg.patience // 3),
                    )
                sched.step(val)
            best.offer(model, history, epoch, val)
            _report_epoch(bar, history, epoch, cfg.epochs, train_loss, val)
            if best.since_best >= cfg.patience:
                history.stopped_early = True
                logger.info("early stop at epoch %d: no better validation %s for %d epochs",
                            epoch, history.metric_name, cfg.patience)
                break
    finally:
        if bar is not None:
            bar.close()
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    history.seconds = time.perf_counter() - t0
    return model, history


def _prepare_splits(train_graphs: Sequence[Graph], val_graphs: Sequence[Graph] | None,
                    cfg: TrainConfig) -> tuple[Prepared, Prepared, tuple[int, int]]:
    """Checked training and validation sets, and the (node, edge) feature widths the model reads.

    Everything is validated before any split, so errors name the graph's index in its file.
    """
    train_list = list(train_graphs)
    if not train_list:
        raise EdgempError("no training graphs")
    if val_graphs is not None and not list(val_graphs):
        raise EdgempError("the validation set is empty")
    x = train_list[0].x
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        validate_graph(train_list[0], 0)  # raises the precise schema error
    node_features = int(x.shape[1])
    edge_width = edge_feature_width(train_list, "training")
    if cfg.family in EDGE_FAMILIES and edge_width == 0:
        raise EdgempError(
            f"family {cfg.family!r} needs edge features but the graphs carry no edge_attr; "
            f"add edge_attr to the graphs or pick a family without edge features (gin, gcn, sage, gat, ggnn)"
        )
    edge_features = edge_width if cfg.family in EDGE_FAMILIES else 0
    train_p = prepare(train_list, cfg.task, node_features, edge_features, "training")
    if val_graphs is None:
        train_p, val_p = split_holdout(train_p, cfg.seed)
        logger.info("no validation set given: held out %d of %d training graphs", len(val_p.graphs), len(train_list))
    else:
        val_p = prepare(list(val_graphs), cfg.task, node_features, edge_features, "validation")
    return train_p, val_p, (node_features, edge_features)


def _train_epoch(model: GraphNet, opt: torch.optim.Optimizer, train_p: Prepared, order: np.ndarray,
                 batch_size: int) -> float:
    """One pass over the training graphs in ``order``; the mean loss per graph."""
    model.train()
    use_edges = model.cfg.uses_edge_features
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        kwargs, _ = batch_inputs([train_p.graphs[i] for i in idx], use_edges)
        target = torch.from_numpy(np.concatenate([train_p.targets[i] for i in idx], axis=0))  # [G or N, T]
        out = model(**kwargs)[model.output_name]
        loss = _loss(model, out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


class _BestWeights:
    """The weights of the best validation epoch so far, and how many epochs have passed since."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.since_best = 0

    def offer(self, model: GraphNet, history: TrainHistory, epoch: int, val: float) -> None:
        better = self.state is None or (
            val > history.best_val_metric if history.higher_is_better else val < history.best_val_metric)
        if better:
            history.best_val_metric, history.best_epoch = val, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.since_best = 0
        else:
            self.since_best += 1


def _report_epoch(bar, history: TrainHistory, epoch: int, epochs: int, train_loss: float, val: float) -> None:
    if bar is not None:
        bar.set_postfix({"loss": f"{train_loss:.4f}", f"val_{history.metric_name}": f"{val:.4f}",
                         "best": f"{history.best_val_metric:.4f}"})
        bar.update(1)
    else:
        logger.info("epoch %d/%d  loss %.4f  val %s %.4f  (best %.4f @ %d)", epoch, epochs,
                    train_loss, history.metric_name, val, history.best_val_metric, history.best_epoch)
