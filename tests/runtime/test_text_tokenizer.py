"""The text runtime's ASCII fast path: BERT's normalizer done in Python gives the same token ids."""
from __future__ import annotations

import random

import pytest

tokenizers = pytest.importorskip("tokenizers")

from edgemp.runtime.text import ascii_tokenizer  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "message", "passing", "graph", "token", "fast", "edge", "##s", "##ing"]


def _bert_tokenizer(lowercase: bool, clean_text: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
                                         *"abcdefghijklmnopqrstuvwxyz.,!?[]"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=clean_text)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # matched on the raw text, case-sensitively
    tok.enable_truncation(max_length=24)
    return tok


@pytest.mark.parametrize("lowercase,clean_text", [(True, True), (False, True), (True, False)])
def test_ascii_fast_path_gives_the_normalizers_token_ids(lowercase, clean_text):
    tok = _bert_tokenizer(lowercase, clean_text)
    fast = ascii_tokenizer(tok)
    assert (fast.clean, fast.lower) == (clean_text, lowercase) and "[mask]" in fast.added
    assert fast.shortcut is not None and fast.shortcut.max_length == 24  # BERT's layout: the cached WordPiece
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)]  # every ASCII character, control characters and DEL included
    pieces = WORDS + [" ", "A", ".", "[CLS]", "[cls]", "[MASK]", "[Sep]", "[", "]", "x" * 101, "ab" * 50,
                      "\x1c", "\x1f", "\x0b", "\x0c", "_", "`", "~", "{", "@", "^"]  # word limit, split rules
    texts = ["The Cat SAT on the\tmat\r\n", "", "\x00\x0b\x0c\x1f\x7f", "graphs, tokens!  EDGE", "a [MASK] b",
             "[CLS] the cat [SEP]", "[cls]", "[CL\x00S]", "naïve"] + [
        "".join(rng.choice(alphabet) if rng.random() < 0.3 else rng.choice(pieces)
                for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    taken = 0
    for t in texts:
        normalized = fast.normalize([t])
        if normalized is None:  # not ASCII, or may hold an added token: the full tokenizer runs
            continue
        taken += 1
        assert fast.tokenizer.encode(normalized[0]).ids == tok.encode(t).ids, repr(t)  # truncation kept too
        ids, types = fast.encode(normalized)[0]  # the cached WordPiece shortcut
        assert ids.tolist() == tok.encode(t).ids and not types.any(), repr(t)
    assert taken > 300  # random texts often hold an added token
    assert fast.normalize(["a [MASK] b"]) is None and fast.normalize(["naïve"]) is None
    assert fast.normalize(["ok", "[cls]"]) is None  # one text that cannot: the whole call takes the full path


def test_no_fast_path_for_other_normalizers():
    from tokenizers import Tokenizer, models, normalizers

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    assert ascii_tokenizer(tok) is None  # no normalizer at all
    tok.normalizer = normalizers.NFKC()
    assert ascii_tokenizer(tok) is None
    assert ascii_tokenizer(object()) is None  # not a `tokenizers` tokenizer


def test_word_cache_shortcut_only_for_the_bert_layout_and_its_cache_is_bounded(monkeypatch):
    """Another pre-tokenizer, template or truncation keeps the Rust tokenizer (after the normalizer); the
    word cache starts over past its limit and still gives the same ids."""
    from tokenizers import pre_tokenizers, processors

    from edgemp.runtime import text_ascii

    tok = _bert_tokenizer(True, True)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert ascii_tokenizer(tok).shortcut is None
    tok = _bert_tokenizer(True, True)
    tok.post_processor = processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", 3)])
    assert ascii_tokenizer(tok).shortcut is None
    tok = _bert_tokenizer(True, True)
    tok.enable_truncation(max_length=24, direction="left")
    assert ascii_tokenizer(tok).shortcut is None
    tok = _bert_tokenizer(True, True)
    tok.no_truncation()
    fast = ascii_tokenizer(tok)
    assert fast.shortcut is not None and fast.shortcut.max_length is None
    long_text = " ".join(WORDS * 10)
    assert fast.encode(fast.normalize([long_text]))[0][0].tolist() == tok.encode(long_text).ids  # nothing cut
    monkeypatch.setattr(text_ascii, "WORD_CACHE_LIMIT", 3)
    fast.shortcut.cache.clear()
    for text in ("the cat sat", "on the mat", "graph token edge", "fast passing message"):
        assert fast.encode(fast.normalize([text]))[0][0].tolist() == tok.encode(text).ids
        assert len(fast.shortcut.cache) <= 3
