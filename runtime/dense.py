"""The dense form's input layout; it lives in the numpy core (:mod:`edgemp.dense_layout`).

Kept so ``from edgemp.runtime import dense`` goes on working.
"""
from edgemp.dense_layout import from_dense, pad_size, to_dense

__all__ = ["from_dense", "pad_size", "to_dense"]
