"""Deterministic English texts for int8 calibration and accuracy checks, generated offline.

Random vocabulary words (``hf_verify.WORDS``) exercise the tokenizer, but an encoder's
int8 error shows on *real-looking* text: activations of fluent sentences are what the
quantization ranges must fit, and nearest-neighbour retrieval only means something when
texts share topics. So this module writes sentences from templates over a dozen topics, in
the shape of a semantic-search workload: short queries, single sentences and multi-sentence
passages (plus a few with numbers, punctuation and non-ASCII words).

Given the model's vocabulary, a quarter of each split is *word soup*: random whole words of
that vocabulary (what benchmarks and odd inputs look like). Activations of such texts light up
channels that fluent text leaves quiet, so a quantizer calibrated on fluent text alone can
fail them badly (MiniLM-L6 with SmoothQuant alpha 0.9: min cosine 0.945 on soups vs 0.994
on sentences); calibrating and checking on both keeps every embedding.

Two disjoint splits come from different seeds: ``calibration`` (what quantization may look
at, e.g. to rank sensitive layers) and ``heldback`` (what the accuracy report is measured
on). :func:`text_split` drops any held-back text that also occurs in the calibration split,
so "held back" is true by construction, not by luck of the seed.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

# topic → (subjects, verbs, objects, places): each topic has its own words, so texts of one topic are
# each other's nearest neighbours and the retrieval check has structure to preserve.
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "cooking": (("the chef", "my grandmother", "a home cook", "the baker"),
                ("roasts", "simmers", "seasons", "bakes", "slices"),
                ("garlic and onions", "a loaf of sourdough", "fresh tomatoes", "the chicken stock", "a lemon tart"),
                ("in a cast iron pan", "for twenty minutes", "over low heat", "in the oven")),
    "football": (("the striker", "the goalkeeper", "the home team", "the coach"),
                 ("scores", "defends", "passes", "wins", "loses"),
                 ("the penalty", "the cup final", "a corner kick", "the derby", "the league title"),
                 ("in extra time", "at the stadium", "before halftime", "in the second half")),
    "finance": (("the central bank", "investors", "the company", "the analyst"),
                ("raises", "cuts", "forecasts", "reports", "buys"),
                ("interest rates", "quarterly earnings", "government bonds", "the stock price", "its dividend"),
                ("this quarter", "after the market closed", "despite inflation", "for the fiscal year")),
    "medicine": (("the doctor", "the nurse", "the patient", "researchers"),
                 ("prescribes", "diagnoses", "treats", "monitors", "studies"),
                 ("high blood pressure", "a viral infection", "the new vaccine", "chronic back pain", "diabetes"),
                 ("at the clinic", "in a clinical trial", "after surgery", "with antibiotics")),
    "software": (("the developer", "the compiler", "the server", "our team"),
                 ("deploys", "debugs", "refactors", "compiles", "tests"),
                 ("the web application", "a memory leak", "the database schema", "the API endpoint", "a unit test"),
                 ("in production", "on every commit", "before the release", "with a profiler")),
    "travel": (("the tourists", "a backpacker", "the pilot", "our guide"),
               ("books", "visits", "explores", "photographs", "misses"),
               ("a cheap flight", "the old cathedral", "the night train", "a beach hotel", "the mountain pass"),
               ("in Kyoto", "near Lisbon", "across Patagonia", "in the Alps")),
    "gardening": (("the gardener", "my neighbour", "volunteers", "the farmer"),
                  ("plants", "prunes", "waters", "harvests", "fertilizes"),
                  ("the rose bushes", "tomato seedlings", "an apple tree", "the vegetable beds", "tulip bulbs"),
                  ("in early spring", "after the frost", "every morning", "in raised beds")),
    "astronomy": (("the telescope", "astronomers", "the probe", "the observatory"),
                  ("observes", "detects", "maps", "orbits", "photographs"),
                  ("a distant galaxy", "the rings of Saturn", "a black hole", "an exoplanet", "the solar wind"),
                  ("at night", "from orbit", "in infrared light", "beyond Neptune")),
    "music": (("the orchestra", "the guitarist", "a young pianist", "the band"),
              ("performs", "records", "composes", "rehearses", "tunes"),
              ("a symphony", "the new album", "a jazz standard", "the opening song", "a violin concerto"),
              ("at the concert hall", "in the studio", "on tour", "for the festival")),
    "law": (("the judge", "the lawyer", "the jury", "the court"),
            ("rules on", "appeals", "reviews", "dismisses", "argues"),
            ("the contract dispute", "a patent claim", "the murder case", "the new regulation", "the evidence"),
            ("in the supreme court", "after a long trial", "under federal law", "before the hearing")),
    "weather": (("the storm", "a cold front", "the heatwave", "heavy rain"),
                ("floods", "hits", "cools", "delays", "damages"),
                ("the coastal towns", "the morning commute", "the harvest", "power lines", "the airport"),
                ("this weekend", "overnight", "across the region", "for three days")),
    "chemistry": (("the chemist", "the reaction", "a catalyst", "the lab"),
                  ("synthesizes", "oxidizes", "measures", "purifies", "dissolves"),
                  ("the solvent", "a polymer", "benzene rings", "the crystal sample", "aqueous sodium chloride"),
                  ("at room temperature", "under pressure", "in the fume hood", "with a spectrometer")),
}
QUESTIONS = ("how does", "why does", "when does", "what does", "where does")
CONNECTORS = ("Meanwhile,", "However,", "As a result,", "Later,", "In addition,", "Surprisingly,")
EXTRAS = ("naïve", "café", "résumé", "Zürich", "東京", "3.14", "1,000", "2025-01-01", "(see above)", "—", "e.g.",
          "don't", "it's", "#42", "100%", "😀")


def _sentence(rng: np.random.Generator, topic: str) -> str:
    subj, verbs, objs, places = TOPICS[topic]
    s = f"{rng.choice(subj)} {rng.choice(verbs)} {rng.choice(objs)}"
    if rng.random() < 0.7:
        s += f" {rng.choice(places)}"
    if rng.random() < 0.15:
        s += f" {rng.choice(EXTRAS)}"
    return s[0].upper() + s[1:] + "."


def _query(rng: np.random.Generator, topic: str) -> str:
    subj, verbs, objs, places = TOPICS[topic]
    kind = rng.integers(3)
    if kind == 0:
        return f"{rng.choice(QUESTIONS)} {rng.choice(subj)} {rng.choice(verbs).rstrip('s')} {rng.choice(objs)}?"
    if kind == 1:
        return f"{rng.choice(objs)} {rng.choice(places)}"
    return str(rng.choice(objs))


def _passage(rng: np.random.Generator, topic: str, sentences: int) -> str:
    parts = [_sentence(rng, topic)]
    for _ in range(sentences - 1):
        other = topic if rng.random() < 0.85 else str(rng.choice(list(TOPICS)))
        s = _sentence(rng, other)
        parts.append(f"{rng.choice(CONNECTORS)} {s[0].lower()}{s[1:]}" if rng.random() < 0.4 else s)
    return " ".join(parts)


def mixed_texts(n: int, seed: int) -> list[str]:
    """``n`` texts: ~45% queries, ~35% sentences, ~20% passages of 3-14 sentences (up to ~250 tokens)."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    out = []
    for _ in range(n):
        topic = str(rng.choice(topics))
        r = rng.random()
        if r < 0.45:
            out.append(_query(rng, topic))
        elif r < 0.80:
            out.append(_sentence(rng, topic) if rng.random() < 0.6 else _passage(rng, topic, 2))
        else:
            out.append(_passage(rng, topic, int(rng.integers(3, 15))))
    return out


CALIBRATION_SEED, HELDBACK_SEED = 1001, 2002
MAX_CALIBRATION_TEXTS = 4096  # the held-back split excludes this many calibration texts
_CHUNK = 512  # texts are drawn in fixed chunks so a shorter split is a prefix of a longer one


@lru_cache(maxsize=8)
def _distinct(seed: int, n: int, exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set(exclude)
    chunk = 0
    while len(out) < n:
        for t in mixed_texts(_CHUNK, seed + 7919 * chunk):
            if t not in seen:
                seen.add(t)
                out.append(t)
                if len(out) == n:
                    break
        chunk += 1
    return tuple(out)


def vocabulary_words(vocab: Sequence[str]) -> tuple[str, ...]:
    """Whole lower-case ASCII words (3+ letters) of a tokenizer vocabulary, sorted: soup material."""
    return tuple(sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and len(w) >= 3))


MIN_SOUP_WORDS = 50  # a vocabulary with fewer whole words (a toy tokenizer) gets no soups


def soup_texts(words: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` texts of random ``words``: 80% 3-200 words (median ~12), 20% long ones of 50-230 words
    (long soups are the hardest case for int8: calibrating without them left MiniLM at min cosine 0.974)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):  # one text at a time, so a shorter list is a prefix of a longer one
        if rng.random() < 0.2:
            k = int(rng.uniform(50, 230))
        else:
            k = int(np.clip(np.rint(rng.lognormal(np.log(12.0), 1.0)), 3, 200))
        out.append(" ".join(rng.choice(words, size=k)))
    return out


def text_split(name: str, n: int, words: Sequence[str] = ()) -> list[str]:
    """``n`` distinct texts of split ``calibration`` or ``heldback``; held-back never overlaps calibration.

    With ``words`` (:func:`vocabulary_words` of the model's tokenizer, at least
    :data:`MIN_SOUP_WORDS`), every fourth text is a word soup of that vocabulary.
    """
    if name not in ("calibration", "heldback"):
        raise ValueError(f"unknown split {name!r}; expected 'calibration' or 'heldback'")
    if name == "calibration" and n > MAX_CALIBRATION_TEXTS:
        raise ValueError(f"at most {MAX_CALIBRATION_TEXTS} calibration texts, asked for {n}")
    n_soup = n // 4 if len(words) >= MIN_SOUP_WORDS else 0
    if name == "calibration":
        fluent = list(_distinct(CALIBRATION_SEED, n - n_soup))
        soups = soup_texts(words, n_soup, CALIBRATION_SEED) if n_soup else []
    else:
        fluent = list(_distinct(HELDBACK_SEED, n - n_soup, frozenset(_distinct(CALIBRATION_SEED, MAX_CALIBRATION_TEXTS))))
        taken = set(soup_texts(words, MAX_CALIBRATION_TEXTS // 4, CALIBRATION_SEED)) if n_soup else set()
        soups = [t for t in soup_texts(words, 2 * n_soup, HELDBACK_SEED) if t not in taken][:n_soup]
    out = fluent[: n - n_soup]
    for k, t in enumerate(soups):  # spread the soups through the split
        out.insert(4 * k + 3 if 4 * k + 3 <= len(out) else len(out), t)
    return out
