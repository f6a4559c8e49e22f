"""Verifiers: does the cached question ask the same thing as the incoming one?

Cosine similarity alone serves wrong answers (questions on one topic are close). A verifier sees each
semantic candidate (cached question, its cosine) and confirms it or not:

* :class:`ConservativeVerifier`, the default without training: cosine >= 0.98 and the same numbers,
  negations and polar words, nearly the same words in the same order. It serves few rewordings (on the
  qqp pairs: 5% of the duplicates at a 5% wrong-hit share, and those "wrong" hits are mostly label noise).
* :class:`~shared_scorer.cache.features.FeatureVerifier` (``frugal train-cache-verifier``, the default
  kind): a small MLP on the cache's own embeddings and lexical checks; trains in seconds.
* :class:`PairVerifier` (``--kind distilbert``): a DistilBERT pair classifier (a cross-encoder on the
  scorer's backbones), fine-tuned on labelled pairs (slow on CPU).

A trained verifier carries a cosine floor and a probability threshold chosen on validation pairs for a
target wrong-hit share (:func:`choose_operating_point`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shared_scorer.errors import CheckpointError, ConfigurationError

FORMAT = "frugal-cache-verifier/1"


@runtime_checkable
class Verifier(Protocol):
    """Confirms semantic candidates; only candidates at cosine >= ``min_similarity`` are shown to it."""

    min_similarity: float

    def confirm(self, query: str, cached: Sequence[str], similarities: Sequence[float]) -> list[bool]:
        """One decision per candidate: serve ``cached[i]``'s answer to ``query`` or not."""
        ...


_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset({"not", "no", "never", "nor", "none", "nobody", "nothing", "without", "cannot"})
_POLAR_WORDS = (
    "against best worst better worse pros cons advantages disadvantages before after more less most least "
    "increase decrease buy sell cheap expensive male female men women boys girls first last"
)
_POLAR = frozenset(_POLAR_WORDS.split(" "))
"""Words whose presence flips a question's meaning; like negations, both questions must have the same."""
_STOP_WORDS = (
    "a an the is are was were be been do does did i you he she it we they my your of to in on at for and or "
    "what which who whom how why when where can could would should will shall may might must this that these "
    "those there their his her its our me us them with by from as about into than so if"
)
_STOP = frozenset(_STOP_WORDS.split(" "))


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold().replace("n't", " not")
    return _WORD.findall(text)


def lexically_same(a: str, b: str, min_overlap: float = 0.8) -> bool:
    """Same numbers, negations and polar words (for/against, best/worst, ...), content-word Jaccard overlap
    >= ``min_overlap``, and the shared content words in the same order.

    >>> lexically_same("How do I learn Python quickly?", "How can I learn python quickly")
    True
    >>> lexically_same("Is 5G safe?", "Is 4G safe?"), lexically_same("Why is it safe?", "Why isn't it safe?")
    (False, False)
    >>> lexically_same("Do Mexican girls like black guys?", "Do black girls like Mexican guys?")
    False
    """
    if sorted(_NUMBER.findall(a)) != sorted(_NUMBER.findall(b)):
        return False
    wa, wb = _words(a), _words(b)
    for flips in (_NEGATIONS, _POLAR):
        if flips.intersection(wa) != flips.intersection(wb):
            return False
    ca, cb = set(wa) - _STOP, set(wb) - _STOP
    if not ca and not cb:
        return set(wa) == set(wb)
    shared = ca & cb
    order_a = list(dict.fromkeys(w for w in wa if w in shared))
    order_b = list(dict.fromkeys(w for w in wb if w in shared))
    return order_a == order_b and len(shared) / len(ca | cb) >= min_overlap


class ConservativeVerifier:
    """Confirms only near-verbatim rewordings: cosine >= ``min_similarity`` and :func:`lexically_same`.

    >>> v = ConservativeVerifier()
    >>> v.confirm("How do I learn Python?", ["How can I learn Python", "How do I learn Java?"], [0.985, 0.99])
    [True, False]
    """

    estimated_wrong_share = 0.05
    """Its wrong-hit share measured on the QQP dev pairs (``frugal cache-bench``); with
    ``AnswerCache(max_wrong_rate=...)`` below it, the cache serves exact matches only."""

    def __init__(self, min_similarity: float = 0.98, min_overlap: float = 0.8) -> None:
        if not 0.0 < min_similarity <= 1.0:
            raise ConfigurationError(f"min_similarity must be in (0, 1], got {min_similarity}")
        self.min_similarity = min_similarity
        self.min_overlap = min_overlap

    def __repr__(self) -> str:
        return f"ConservativeVerifier(min_similarity={self.min_similarity}, min_overlap={self.min_overlap})"

    def confirm(self, query: str, cached: Sequence[str], similarities: Sequence[float]) -> list[bool]:
        return [
            s >= self.min_similarity and lexically_same(query, c, self.min_overlap)
            for c, s in zip(cached, similarities, strict=True)
        ]

    def scores(self, query: Sequence[str], cached: Sequence[str], similarities: Sequence[float]) -> np.ndarray:
        """A score per pair for precision-recall curves: the cosine where the lexical check passes, else -inf."""
        return np.array(
            [
                s if lexically_same(q, c, self.min_overlap) else -np.inf
                for q, c, s in zip(query, cached, similarities, strict=True)
            ]
        )


class ThresholdedVerifier:
    """Shared by trained verifiers: confirm a candidate when its cosine reaches ``min_similarity`` and its
    ``probabilities`` (P(same question), defined by the subclass) reaches ``threshold``.

    A verifier trained by this version also carries its validation curve (``info["calibration"]``: the
    probability, cosine, label and guard verdict of each validation pair), from which
    :meth:`operating_point` picks the point for any error bound."""

    threshold: float
    min_similarity: float
    info: dict[str, Any]

    def operating_point(self, max_wrong_rate: float) -> dict[str, float]:
        """The cosine floor and threshold serving the most validation duplicates while the wrong-hit share
        (its Wilson upper bound at the verifier's ``margin_z``; pairs a guard rejects never hit) stays
        <= ``max_wrong_rate`` (:func:`choose_operating_point`)."""
        cal = (getattr(self, "info", None) or {}).get("calibration")
        if not isinstance(cal, dict):
            raise ConfigurationError(
                f"{self!r} carries no validation curve (trained before error bounds), so max_wrong_rate cannot "
                "pick its operating point: train it again with frugal train-cache-verifier"
            )
        try:
            probs = np.asarray(cal["probs"], dtype=float)
            keep = np.asarray(cal["guard_passes"], dtype=bool)
            return choose_operating_point(
                np.where(keep, probs, -np.inf), np.asarray(cal["sims"], dtype=float),
                np.asarray(cal["duplicate"], dtype=bool), target_wrong_share=max_wrong_rate,
                z=float(cal["margin_z"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self!r}: corrupt validation curve ({exc})") from None

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def confirm(self, query: str, cached: Sequence[str], similarities: Sequence[float]) -> list[bool]:
        """One decision per candidate (the cached questions are scored against ``query`` in one batch)."""
        keep = [i for i, s in enumerate(similarities) if s >= self.min_similarity]
        decisions = [False] * len(cached)
        if keep:
            probs = self.probabilities([cached[i] for i in keep], [query] * len(keep))
            for i, p in zip(keep, probs, strict=True):
                decisions[i] = bool(p >= self.threshold)
        return decisions

    def scores(self, query: Sequence[str], cached: Sequence[str], similarities: Sequence[float]) -> np.ndarray:
        """P(same) for pairs at cosine >= ``min_similarity``, ``-inf`` for the others."""
        sims = np.asarray(similarities, dtype=float)
        out = np.full(len(sims), -np.inf)
        keep = np.flatnonzero(sims >= self.min_similarity)
        if len(keep):
            out[keep] = self.probabilities([cached[int(i)] for i in keep], [query[int(i)] for i in keep])
        return out


class PairVerifier(ThresholdedVerifier):
    """A DistilBERT pair classifier: P(same question) for (cached, incoming), calibrated, with a cosine floor
    ``min_similarity`` and a probability ``threshold`` chosen for a target wrong-hit share.

    Train it with :func:`shared_scorer.cache.verifier_training.train_verifier` (``frugal train-cache-verifier``); save
    and load as safetensors + JSON.

    >>> from shared_scorer.scoring.backbone import load_backbone
    >>> from shared_scorer.scoring.training import Calibrator
    >>> b = load_backbone("tiny-random")
    >>> v = PairVerifier(b.model, b.tokenizer, Calibrator("none", {}), threshold=0.0, min_similarity=0.5)
    >>> v.confirm("How old is the moon?", ["What is the age of the moon?"], [0.8])
    [True]
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        calibrator: Any,
        *,
        threshold: float,
        min_similarity: float,
        max_length: int = 64,
        batch_size: int = 64,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.calibrator = calibrator
        self.threshold = threshold
        self.min_similarity = min_similarity
        self.max_length = max_length
        self.batch_size = batch_size
        self.info: dict[str, Any] = dict(info or {})

    def __repr__(self) -> str:
        return f"PairVerifier(threshold={self.threshold:.4f}, min_similarity={self.min_similarity})"

    def encode(self, first: Sequence[str], second: Sequence[str]) -> dict[str, Any]:
        """Tokenised pairs as model inputs (DistilBERT has no token types: ``[CLS] a [SEP] b [SEP]``)."""
        batch = self.tokenizer(
            list(first), list(second), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def logits(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Raw logits, averaged over both orders of each pair (the question is symmetric)."""
        import torch

        first, second = list(first), list(second)
        out = np.zeros(len(first), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(first), self.batch_size):
                a, b = first[start : start + self.batch_size], second[start : start + self.batch_size]
                both = self.model(**self.encode(a + b, b + a)).logits.squeeze(-1).double().numpy()
                out[start : start + len(a)] = (both[: len(a)] + both[len(a) :]) / 2
        return out

    def probabilities(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Calibrated P(same question) per pair."""
        if not first:
            return np.zeros(0)
        return np.asarray(self.calibrator.apply(self.logits(first, second)), dtype=float)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json``, the tokenizer and ``verifier.json`` (no pickle), with
        the SHA-256 of every file in ``verifier.json``."""
        from safetensors.torch import save_file

        from shared_scorer.scoring.backbone import file_sha256

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(self.model.config.to_json_string())
        written = [Path(f) for f in self.tokenizer.save_pretrained(str(folder / "tokenizer"))]
        files = ["model.safetensors", "config.json"]
        files += [f"tokenizer/{f.name}" for f in written if f.parent == folder / "tokenizer" and f.is_file()]
        meta = {
            "format": FORMAT,
            "sha256": {name: file_sha256(folder / name) for name in files},
            "threshold": self.threshold,
            "min_similarity": self.min_similarity,
            "max_length": self.max_length,
            "calibrator": self.calibrator.to_json(),
            "info": self.info,
        }
        (folder / "verifier.json").write_text(json.dumps(meta, indent=2, allow_nan=False, default=_finite))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PairVerifier:
        """Load a folder written by :meth:`save`; anything missing, corrupt (its SHA-256 differs from
        ``verifier.json``), mistyped or outside the folder is a :class:`CheckpointError`."""
        from transformers import DistilBertForSequenceClassification

        from shared_scorer.scoring.backbone import (
            checkpoint_file,
            distilbert_config,
            load_tokenizer,
            read_config,
            read_safetensors,
            verify_sha256,
        )
        from shared_scorer.scoring.training import Calibrator

        folder = Path(folder)
        path = folder / "verifier.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing; not a cache-verifier folder") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: field 'format' must be {FORMAT!r}")
        try:
            threshold, floor = float(meta["threshold"]), float(meta["min_similarity"])
            calibrator = Calibrator.from_json(meta["calibrator"])
            max_length = int(meta.get("max_length", 64))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad or missing field ({exc})") from None
        hashes = meta.get("sha256")
        if not isinstance(hashes, dict):
            raise CheckpointError(f"{path}: field 'sha256' is missing (a verifier saved before hashes: save it again)")
        checked = {checkpoint_file(folder, name, f"{path}: field 'sha256'") for name in hashes}
        for name, digest in hashes.items():
            verify_sha256(folder / name, digest, path)
        weights = checkpoint_file(folder, "model.safetensors", str(path))
        if weights not in checked or folder / "config.json" not in checked:
            raise CheckpointError(f"{path}: field 'sha256' must list model.safetensors and config.json")
        config = distilbert_config(read_config(folder), folder / "config.json")
        try:
            model = DistilBertForSequenceClassification(config)
            model.load_state_dict(read_safetensors(weights), strict=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{weights}: does not fit config.json ({exc})") from None
        tokenizer = load_tokenizer(checkpoint_file(folder, "tokenizer", str(path)))
        if len(tokenizer) > config.vocab_size:
            raise CheckpointError(
                f"{folder / 'tokenizer'}: {len(tokenizer)} tokens, more than config.json's "
                f"vocab_size {config.vocab_size}"
            )
        return cls(
            model, tokenizer, calibrator, threshold=threshold, min_similarity=floor, max_length=max_length,
            info=meta.get("info") or {},
        )  # fmt: skip


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def calibration_record(
    probs: np.ndarray,
    sims: np.ndarray,
    duplicate: np.ndarray,
    first: Sequence[str],
    second: Sequence[str],
    margin_z: float,
) -> dict[str, Any]:
    """The validation curve a trained verifier saves (see :meth:`ThresholdedVerifier.operating_point`)."""
    from shared_scorer.cache.guards import passes

    return {
        "probs": [round(float(p), 7) for p in probs],
        "sims": [round(float(s), 6) for s in sims],
        "duplicate": [bool(d) for d in duplicate],
        "guard_passes": [passes(a, b) for a, b in zip(first, second, strict=True)],
        "margin_z": float(margin_z),
    }


def guarded(probs: np.ndarray, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
    """``probs`` with ``-inf`` where a lexical guard rejects the pair (it can never be served)."""
    from shared_scorer.cache.guards import passes

    keep = np.array([passes(a, b) for a, b in zip(first, second, strict=True)], dtype=bool)
    return np.where(keep, np.asarray(probs, dtype=float), -np.inf)


def choose_operating_point(
    probs: np.ndarray,
    sims: np.ndarray,
    duplicate: np.ndarray,
    *,
    target_wrong_share: float = 0.05,
    floors: Sequence[float] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
    z: float = 1.0,
    min_hits: int = 20,
) -> dict[str, float]:
    """The (cosine floor, probability threshold) serving the most duplicates while the wrong-hit share,
    counted with a margin (its Wilson upper bound at ``z`` standard errors), stays <= the target.

    Falls back to the strictest point (threshold above every probability: no semantic hits) when no
    point qualifies.
    """
    probs, sims, duplicate = np.asarray(probs, float), np.asarray(sims, float), np.asarray(duplicate, bool)
    best = {"min_similarity": 1.0, "threshold": 1.0 + 1e-9, "duplicate_hit_rate": 0.0, "wrong_hit_share": 0.0}
    n_dup = max(1, int(duplicate.sum()))
    for floor in floors:
        mask = sims >= floor
        if not mask.any():
            continue
        p, d = probs[mask], duplicate[mask]
        order = np.argsort(-p, kind="stable")
        p, d = p[order], d[order]
        hits = np.arange(1, len(p) + 1)
        wrong = np.cumsum(~d)
        share = wrong / hits
        upper = (share + z * z / (2 * hits) + z * np.sqrt(share * (1 - share) / hits + z * z / (4 * hits**2))) / (
            1 + z * z / hits
        )
        # a threshold can only cut between distinct probabilities: consider the last row of each tie run
        cut = np.r_[p[1:] < p[:-1], True]
        ok = np.flatnonzero(cut & (upper <= target_wrong_share) & (hits >= min_hits) & np.isfinite(p))
        if len(ok) == 0:
            continue
        i = int(ok[-1])
        rate = float(np.cumsum(d)[i] / n_dup)
        if rate > best["duplicate_hit_rate"]:
            best = {
                "min_similarity": float(floor),
                "threshold": float(p[i]),
                "duplicate_hit_rate": round(rate, 4),
                "wrong_hit_share": round(float(share[i]), 4),
            }
    return best
