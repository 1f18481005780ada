"""Deterministic English texts for int8 calibration and accuracy checks, generated offline.

Random vocabulary words (``hf_verify.WORDS``) exercise the tokenizer, but an encoder's
int8 error shows on *real-looking* text: activations of fluent sentences are what the
quantization ranges must fit, and nearest-neighbour retrieval only means something when
texts share topics. So this module writes sentences from templates over a dozen topics, in
the shape of a semantic-search workload: short queries, single sentences and multi-sentence
passages (plus a few with numbers, punctuation and non-ASCII words).

Two disjoint splits come from different seeds: ``calibration`` (what quantization may look
at, e.g. to rank sensitive layers) and ``heldback`` (what the accuracy report is measured
on). :func:`text_split` drops any held-back text that also occurs in the calibration split,
so "held back" is true by construction, not by luck of the seed.
"""
from __future__ import annotations

from functools import lru_cache

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


def text_split(name: str, n: int) -> list[str]:
    """``n`` distinct texts of split ``calibration`` or ``heldback``; held-back never overlaps calibration."""
    if name == "calibration":
        if n > MAX_CALIBRATION_TEXTS:
            raise ValueError(f"at most {MAX_CALIBRATION_TEXTS} calibration texts, asked for {n}")
        return list(_distinct(CALIBRATION_SEED, n))
    if name == "heldback":
        return list(_distinct(HELDBACK_SEED, n, frozenset(_distinct(CALIBRATION_SEED, MAX_CALIBRATION_TEXTS))))
    raise ValueError(f"unknown split {name!r}; expected 'calibration' or 'heldback'")
