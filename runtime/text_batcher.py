"""Dynamic batching of text requests: the graph :class:`~edgemp.runtime.batcher.Batcher`'s
queue, budget and timeouts, with texts in place of graphs.

A text plays a graph with ``num_nodes`` = its token count and no edges, so the queue
policy is unchanged (arrival order, ``max_batch_graphs`` texts and ``max_batch_nodes``
tokens per batch, ``max_queue_delay_us``, per-request timeouts, isolation of a failing
request). What differs is running a batch: the texts of all merged requests are handed to
:meth:`TextModel.run_tokenized`, which sorts them into length buckets and pads each bucket
only to its longest text, so one long request does not make every short one pay for its
padding.
"""
from __future__ import annotations

import logging

from edgemp.runtime.batcher import Batcher, BatcherConfig, BatchHook, CompletionHook
from edgemp.runtime.text import TextModel

logger = logging.getLogger(__name__)

# 32 texts per batch, sentence-transformers' encode() default; 8192 tokens = 32 texts of 256
# tokens, so the text cap binds first for realistic lengths.
TEXT_BATCHER_DEFAULTS = BatcherConfig(max_batch_graphs=32, max_batch_nodes=8192, max_batch_edges=1)


class TextBatcher(Batcher):
    """Queue text requests from many threads; run them in length-bucketed batches on one worker.

    ``submit(texts)`` tokenises at once (a non-string or invalid UTF-8 text fails to its
    caller with :class:`~edgemp.text_spec.TextInputError`, nothing queued) and returns a
    future of one output dict per text. ``config.max_batch_graphs`` counts texts and
    ``max_batch_nodes`` counts tokens.
    """

    def __init__(self, model: TextModel, config: BatcherConfig | None = None,
                 on_complete: CompletionHook | None = None, on_batch: BatchHook | None = None) -> None:
        super().__init__(model, config or TEXT_BATCHER_DEFAULTS, on_complete, on_batch)  # type: ignore[arg-type]

    checks_in_batch = False  # texts are checked as they are tokenized, at submit

    def _run_items(self, items: list, batch: None = None) -> tuple[list, int, int]:
        """Texts of all merged requests in one length-bucketed run; size = texts, nodes = tokens."""
        return self.model.run_tokenized(items), len(items), sum(t.num_tokens for t in items)  # type: ignore[attr-defined]
