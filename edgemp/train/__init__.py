"""Training and evaluation of :class:`~edgemp.models.net.GraphNet` models (needs torch).

Beside the models, not in the numpy core: one module per job.

- :mod:`~edgemp.train.config`: :class:`TrainConfig` and the history a run returns,
- :mod:`~edgemp.train.data`: target checks, edge-feature fitting, batching, the hold-out split,
- :mod:`~edgemp.train.loop`: :func:`train`,
- :mod:`~edgemp.train.evaluation`: :func:`predict`, :func:`evaluate_model`, :func:`evaluate_checkpoint`.

``train`` infers every model dimension from the data (node/edge feature widths, number
of targets or classes, target normalisation), so a checkpoint can never disagree with
the graphs it was trained on. Early stopping always has a validation set to watch:
without one, 10% of the training graphs are held out (seeded).

Determinism: the same graphs, config and seed give the same weights on the same
machine (``torch.manual_seed`` for initialisation, a numpy generator for shuffling and
the hold-out split). ``torch.set_num_threads`` is left to the caller.
"""
from edgemp.train.config import (
    EVAL_BATCH_SIZE,
    GRAD_CLIP_NORM,
    VAL_FRACTION,
    EpochRecord,
    TrainConfig,
    TrainConfigError,
    TrainHistory,
)
from edgemp.train.evaluation import evaluate_checkpoint, evaluate_model, predict
from edgemp.train.loop import train

__all__ = [
    "EVAL_BATCH_SIZE", "GRAD_CLIP_NORM", "VAL_FRACTION", "EpochRecord", "TrainConfig", "TrainConfigError",
    "TrainHistory", "evaluate_checkpoint", "evaluate_model", "predict", "train",
]
