"""The text runtime's ASCII fast path: BERT's tokenizer steps redone where Python is cheaper.

For an ASCII text, BERT's normalizer only cleans (:data:`ASCII_CLEAN`) and lowercases (accents
and CJK characters are not ASCII), which ``str.translate`` / ``str.lower`` do in microseconds;
the Rust normalizer costs ~100 µs per 128-token text. Then, for the common BERT layout
(BertPreTokenizer → WordPiece → ``[CLS] A [SEP]``), :class:`WordPieceShortcut` splits words with
one regular expression and looks each word's pieces up in a cache filled by the tokenizer's own
WordPiece model: right after an ONNX Runtime run has evicted the caches, the Rust path walks its
vocabulary hash map for every prefix of every word (MiniLM-L6, 128 tokens: ~380 µs), the shortcut
does one dict lookup per word (~210 µs). Token ids are the tokenizer's own, checked on random ASCII
texts with every control character, long words and truncation (tests/runtime/test_text_tokenizer.py).
Anything else (non-ASCII, a text that may hold an added token such as ``[CLS]`` or ``[MASK]``, another
normalizer, pre-tokenizer, model or template) takes the full tokenizer.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# What BERT's normalizer (clean_text) does to ASCII: drop control characters and NUL, \t \n \r become spaces
ASCII_CLEAN = {**{c: None for c in range(32)}, 127: None, **{ord(c): " " for c in "\t\n\r"}}
# BertPreTokenizer on ASCII: split at Rust's char::is_whitespace (\t \n \v \f \r and space; not \x1c-\x1f,
# which Python's \s would take) and isolate each ASCII punctuation character (33-47, 58-64, 91-96, 123-126)
ASCII_WORDS = re.compile(r"[^\t\n\x0b\x0c\r !-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")
WORD_CACHE_LIMIT = 1 << 16  # distinct words kept; the cache starts over past it (bounded memory)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@dataclass
class WordPieceShortcut:
    """``[CLS] + WordPiece(word) for each word + [SEP]``, truncated as the tokenizer would, with each
    word's pieces cached (the pieces come from the tokenizer's own WordPiece model)."""

    model: Any  # the tokenizers WordPiece model
    cls_id: int
    sep_id: int
    max_length: int | None  # the tokenizer's truncation (specials included), None for none
    cache: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def encode(self, normalized: str) -> np.ndarray:
        """Token ids of an ASCII text already normalized (:meth:`AsciiTokenizer.normalize`)."""
        room = None if self.max_length is None else self.max_length - 2
        ids = [self.cls_id]
        cache = self.cache
        for word in ASCII_WORDS.findall(normalized):
            pieces = cache.get(word)
            if pieces is None:
                pieces = tuple(t.id for t in self.model.tokenize(word))
                if len(cache) >= WORD_CACHE_LIMIT:
                    cache.clear()
                cache[word] = pieces
            ids.extend(pieces)
            if room is not None and len(ids) > room:
                del ids[room + 1:]
                break
        ids.append(self.sep_id)
        return np.asarray(ids, np.int64)


@dataclass(frozen=True)
class AsciiTokenizer:
    """BERT's tokenizer without its normalizer, for ASCII texts normalized in Python (:func:`ascii_tokenizer`)."""

    tokenizer: Any
    clean: bool  # BertNormalizer clean_text: :data:`ASCII_CLEAN`
    lower: bool  # BertNormalizer lowercase
    added: tuple[str, ...]  # added tokens ([CLS], [MASK], ...), lowercased: texts holding one take the full path
    shortcut: WordPieceShortcut | None = None  # the BERT layout's cached WordPiece, when the tokenizer has it

    def normalize(self, texts: Sequence[str]) -> list[str] | None:
        """``texts`` as BERT's normalizer leaves them, or None when one is not ASCII or may hold an added token
        (matched on the raw text, case-sensitively, before normalization: only the full tokenizer gets that right)."""
        out = []
        for t in texts:
            if not t.isascii():
                return None
            low = t.lower()
            norm = low if self.lower else t
            if self.clean:
                cleaned = norm.translate(ASCII_CLEAN)
                if cleaned != norm and any(a in cleaned.lower() for a in self.added):
                    return None  # an added token that cleaning would join up
                norm = cleaned
            if any(a in low for a in self.added):
                return None
            out.append(norm)
        return out

    def encode(self, normalized: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, type ids) of normalized texts: through the shortcut when there is one, else the Rust
        tokenizer without its normalizer."""
        if self.shortcut is not None:
            out = []
            for t in normalized:
                ids = self.shortcut.encode(t)
                out.append((ids, np.zeros(ids.shape[0], np.int64)))
            return out
        tok = self.tokenizer
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nothing here reads
        encodings = getattr(tok, "encode_batch_fast", tok.encode_batch)(list(normalized))
        return [(np.asarray(e.ids, np.int64), np.asarray(e.type_ids, np.int64)) for e in encodings]


def _special_id(config: dict, piece: dict) -> int | None:
    """The id of a TemplateProcessing special-token piece with type id 0, else None."""
    spec = piece.get("SpecialToken") if isinstance(piece, dict) else None
    if not spec or spec.get("type_id") != 0:
        return None
    ids = (config.get("special_tokens") or {}).get(spec.get("id"), {}).get("ids")
    return ids[0] if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], int) else None


def _bert_layout(config: dict) -> tuple[int, int] | None:
    """(cls id, sep id) when the tokenizer is BertPreTokenizer → WordPiece → ``[CLS] A [SEP]`` (type ids 0),
    truncating from the right without stride and not padding; else None."""
    if (config.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer" or config.get("padding"):
        return None
    if (config.get("model") or {}).get("type") != "WordPiece":
        return None
    trunc = config.get("truncation")
    if trunc and (trunc.get("direction") != "Right" or trunc.get("stride") or
                  trunc.get("strategy") not in ("LongestFirst", "OnlyFirst") or int(trunc.get("max_length", 0)) < 2):
        return None
    post = config.get("post_processor") or {}
    if post.get("type") == "BertProcessing":
        cls, sep = post.get("cls"), post.get("sep")
        return (cls[1], sep[1]) if cls and sep else None
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    if len(single) != 3 or single[1] != {"Sequence": {"id": "A", "type_id": 0}}:
        return None
    cls, sep = _special_id(post, single[0]), _special_id(post, single[2])
    return (cls, sep) if cls is not None and sep is not None else None


def ascii_tokenizer(tokenizer: Any) -> AsciiTokenizer | None:
    """The ASCII fast path of ``tokenizer`` when its normalizer is BERT's, else None (see the module)."""
    try:
        from tokenizers import Tokenizer, normalizers

        config = json.loads(tokenizer.to_str())
        norm = config.get("normalizer") or {}
        if norm.get("type") != "BertNormalizer":
            return None
        plain = Tokenizer.from_str(tokenizer.to_str())  # same truncation / padding settings
        plain.normalizer = normalizers.Sequence([])
        added = tuple(str(a["content"]).lower() for a in config.get("added_tokens") or [])
        layout = _bert_layout(config)
        trunc = config.get("truncation")
        shortcut = None if layout is None else WordPieceShortcut(
            plain.model, layout[0], layout[1], int(trunc["max_length"]) if trunc else None)
    except Exception as e:  # not a `tokenizers` tokenizer, or one it cannot round-trip: keep the normalizer
        logger.debug("no ASCII fast path for this tokenizer: %s", _one_line(e))
        return None
    return AsciiTokenizer(plain, bool(norm.get("clean_text", True)), bool(norm.get("lowercase", True)),
                          tuple(a for a in added if a), shortcut)
