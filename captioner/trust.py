"""How far to trust a caption: calibrated confidence and the out-of-domain flag.

Two statistics travel with a checkpoint, fitted once on data the decoder did not learn from
(``captioner calibrate``, or training's last step; see :mod:`captioner.training.trust_fit`)::

    CKPT/trust.json          calibration (a monotone map, JSON), domain facts, what the model was trained on
    CKPT/trust.safetensors   the training features' mean and whitening directions

**Confidence.** A caption's *statistic* (by default its ``score``, the summed
log-probability of its words and ``<end>``; the lowest or the mean word log-probability
are the alternatives) is mapped to [0, 1] by a logistic curve (Platt scaling; an isotonic
step function is the other choice) fitted on held-out captions against whether each was
exactly right. So "0.9" means: of held-out captions with
that confidence, about 90 % were right.

**Out of domain.** The pooled CNN features ``f`` (B, F) of the training images are
summarised by their mean and a shrinkage covariance: Ledoit-Wolf shrinkage toward a scaled
identity, kept as its top ``rank`` eigen-directions plus one shared variance for the rest.
An image's ``domain_distance`` is its Mahalanobis distance under that covariance, divided
by sqrt(F) so that a typical training image is near 1; the threshold is a high quantile
(99.5 % by default) of the distances of held-out images. ``in_domain`` is
``distance <= threshold``.

A checkpoint without these files still loads and captions; its results carry ``None`` for
the fields it cannot fill (said once in the log).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import TRUST_CONFIG, TRUST_WEIGHTS
from .errors import CheckpointError
from .fsio import atomic_write_path

log = logging.getLogger(__name__)

TRUST_FORMAT = "captioner-trust/1"
STATISTICS = ("min_token_logprob", "mean_token_logprob", "score")
DEFAULT_STATISTIC = "score"
DEFAULT_QUANTILE = 0.995
DEFAULT_RANK = 512  # of 1280 for Lite0: 2.6 MB, nearly the separation of all 1280 (docs/trust.md)


# ---------------------------------------------------------------------- the per-caption statistic
def pooled(features: np.ndarray) -> np.ndarray:
    """Pooled features (B, F) of either kind of encoder output: (B, F) as is, the spatial
    mean of maps (B, N, F) (what the global average pool gives), in float32."""
    x = np.asarray(features)
    return x.mean(axis=1, dtype=np.float32) if x.ndim == 3 else x.astype(np.float32, copy=False)  # (B, F)


def caption_statistic(token_logprobs: np.ndarray, statistic: str = DEFAULT_STATISTIC) -> float:
    """One number per caption from the log-probs of its words and ``<end>`` (T,)."""
    token_logprobs = np.asarray(token_logprobs, dtype=np.float64)
    if token_logprobs.size == 0:
        return 0.0
    if statistic == "min_token_logprob":
        return float(token_logprobs.min())
    if statistic == "mean_token_logprob":
        return float(token_logprobs.mean())
    if statistic == "score":
        return float(token_logprobs.sum())
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing step function of ``x`` closest to ``y``
    in squared error. Returns the blocks' (mean x, mean y), x increasing."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    means: list[float] = []  # per block: mean y, mean x, weight
    centres: list[float] = []
    weights: list[float] = []
    for xi, yi in zip(xs, ys):
        means.append(yi)
        centres.append(xi)
        weights.append(1.0)
        while len(means) > 1 and means[-2] >= means[-1]:
            w = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            centres[-2] = (centres[-2] * weights[-2] + centres[-1] * weights[-1]) / w
            weights[-2] = w
            del means[-1], centres[-1], weights[-1]
    return np.array(centres), np.array(means)


def platt_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """Logistic regression of 0/1 ``y`` on one statistic ``x`` (Newton's method, a little L2
    on the standardised slope): P(right) = sigmoid(slope * x + intercept)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    a = np.c_[np.ones_like(x), (x - mu) / sd]  # (N, 2)
    w = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (p - y) + l2 * np.array([0.0, w[1]])
        hess = (a * (p * (1 - p))[:, None]).T @ a + l2 * np.diag([1e-9, 1.0])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    slope = float(w[1] / sd)
    return slope, float(w[0] - slope * mu)


METHODS = ("platt", "isotonic")


@dataclass
class Calibration:
    """A monotone map from a caption statistic to the chance the caption is right: a
    logistic curve (``platt``, the default: two numbers, steady on a few hundred captions)
    or a monotone step function (``isotonic``, needs thousands)."""

    statistic: str
    method: str = "platt"
    slope: float = 0.0  # platt: P = sigmoid(slope * statistic + intercept)
    intercept: float = 0.0
    knots_x: list[float] = field(default_factory=list)  # isotonic: increasing statistic values
    knots_y: list[float] = field(default_factory=list)  # isotonic: non-decreasing probabilities
    target: str = "exact_match"  # what "right" meant when fitting: scene_correct | exact_match
    captions: int = 0  # how many held-out captions it was fitted on
    accuracy: float = 0.0  # their rate of being right
    decoding: dict = field(default_factory=dict)  # the generation settings of those captions

    @classmethod
    def fit(
        cls,
        stats: np.ndarray,
        correct: np.ndarray,
        statistic: str = DEFAULT_STATISTIC,
        method: str = "platt",
        **facts,
    ) -> Calibration:
        """Fit ``correct`` (0/1) on ``stats``, one value each per held-out caption."""
        stats, correct = np.asarray(stats, float), np.asarray(correct, float)
        if stats.shape != correct.shape or stats.ndim != 1 or len(stats) < 2:
            raise ValueError("calibration needs at least two held-out captions, one statistic and one 0/1 each")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        common = dict(captions=len(stats), accuracy=float(correct.mean()), **facts)
        if method == "platt":
            slope, intercept = platt_fit(stats, correct)
            return cls(statistic, "platt", slope=max(slope, 0.0), intercept=intercept, **common)
        xs, ys = isotonic_fit(stats, correct)
        return cls(
            statistic,
            "isotonic",
            knots_x=[float(v) for v in xs],
            knots_y=[float(min(max(v, 0.0), 1.0)) for v in ys],
            **common,
        )

    def confidence(self, stats: np.ndarray | list[float]) -> np.ndarray:
        """Probabilities in [0, 1] for caption statistics."""
        x = np.asarray(stats, float)
        if self.method == "platt":
            z = np.clip(self.slope * x + self.intercept, -50.0, 50.0)
            return 1.0 / (1.0 + np.exp(-z))
        return np.clip(np.interp(x, self.knots_x, self.knots_y), 0.0, 1.0)  # flat beyond the ends

    def to_dict(self) -> dict:
        out = {
            "statistic": self.statistic,
            "method": self.method,
            "target": self.target,
            "captions": self.captions,
            "accuracy": self.accuracy,
            "decoding": self.decoding,
        }
        if self.method == "platt":
            out.update(slope=self.slope, intercept=self.intercept)
        else:
            out.update(knots_x=self.knots_x, knots_y=self.knots_y)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        cal = cls(
            statistic=str(data["statistic"]),
            method=str(data.get("method", "platt")),
            slope=float(data.get("slope", 0.0)),
            intercept=float(data.get("intercept", 0.0)),
            knots_x=[float(v) for v in data.get("knots_x", [])],
            knots_y=[float(v) for v in data.get("knots_y", [])],
            target=str(data.get("target", "exact_match")),
            captions=int(data.get("captions", 0)),
            accuracy=float(data.get("accuracy", 0.0)),
            decoding=dict(data.get("decoding") or {}),
        )
        if cal.statistic not in STATISTICS or cal.method not in METHODS:
            raise ValueError(f"unknown statistic {cal.statistic!r} or method {cal.method!r}")
        if cal.method == "platt" and not (math.isfinite(cal.slope) and math.isfinite(cal.intercept) and cal.slope >= 0):
            raise ValueError("a platt calibration needs a finite slope >= 0 and a finite intercept")
        if cal.method == "isotonic":
            if not cal.knots_x or len(cal.knots_x) != len(cal.knots_y):
                raise ValueError("knots_x and knots_y must be non-empty and of the same length")
            if any(b < a for a, b in zip(cal.knots_x, cal.knots_x[1:])) or any(
                b < a or not 0.0 <= a <= 1.0 for a, b in zip(cal.knots_y, [*cal.knots_y[1:], 1.0])
            ):
                raise ValueError("the calibration knots must be increasing, with probabilities in [0, 1]")
        return cal


# ---------------------------------------------------------------------- the domain model
def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (F,), shrunk covariance (F, F) and shrinkage in [0, 1] of samples ``x`` (N, F).
    Ledoit & Wolf (2004): (1 - a) S + a (tr S / F) I with the ``a`` that minimises the
    expected Frobenius error; computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    n, f = x.shape
    mean = x.mean(0)  # (F,)
    xc = x - mean  # (N, F)
    s = xc.T @ xc / n  # (F, F) sample covariance
    mu = float(np.trace(s)) / f
    delta = float(((s - mu * np.eye(f)) ** 2).sum()) / f
    sq = xc**2  # (N, F)
    beta = float((sq.T @ sq).sum() / n - (s**2).sum()) / (n * f)  # variance of the S estimate
    a = 0.0 if delta <= 0 else min(max(beta / delta, 0.0), 1.0)
    cov = (1.0 - a) * s + a * mu * np.eye(f)
    return mean, cov, a


@dataclass
class DomainModel:
    """Where the training images' features lie; distances of new features to them."""

    mean: np.ndarray  # (F,) float32
    directions: np.ndarray  # (F, R) orthonormal top eigen-directions of the shrunk covariance
    variances: np.ndarray  # (R,) their variances
    rest_variance: float  # the shared variance of every other direction
    threshold: float  # distances above it are out of domain
    quantile: float = DEFAULT_QUANTILE  # of held-out distances, where the threshold was set
    shrinkage: float = 0.0
    images: int = 0  # training images summarised
    held_out: int = 0  # images the threshold came from

    @classmethod
    def fit(cls, features: np.ndarray, rank: int = DEFAULT_RANK, shrinkage: float | None = None) -> DomainModel:
        """Summarise training features (N, F) (maps (N, L, F) are pooled first); the threshold
        is set by :meth:`set_threshold`."""
        features = pooled(features)  # (N, F)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError("the domain model needs at least two feature rows (N, F)")
        mean, cov, a = ledoit_wolf(features)
        f = cov.shape[0]
        if shrinkage is not None:  # a fixed shrinkage instead of Ledoit-Wolf's estimate
            s = (cov - a * (np.trace(cov) / f) * np.eye(f)) / max(1.0 - a, 1e-12)
            a = float(shrinkage)
            cov = (1 - a) * s + a * (np.trace(s) / f) * np.eye(f)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        r = min(int(rank), f - 1)
        top_vals, top_vecs = evals[-r:][::-1], evecs[:, -r:][:, ::-1]  # (R,), (F, R)
        rest = float(np.clip(evals[:-r], 1e-12, None).mean())
        return cls(
            mean.astype(np.float32),
            np.ascontiguousarray(top_vecs, dtype=np.float32),
            np.clip(top_vals, 1e-12, None).astype(np.float32),
            rest,
            threshold=math.inf,
            shrinkage=a,
            images=int(features.shape[0]),
        )

    @property
    def feature_dim(self) -> int:
        return int(self.mean.size)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance / sqrt(F) of each row of ``features`` (B, F) -> (B,); maps
        (B, L, F) are pooled first."""
        features = pooled(features)  # (B, F)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape (B, {self.feature_dim}), got {tuple(features.shape)}")
        x = features - self.mean  # (B, F)
        proj = x @ self.directions  # (B, R)
        inside = (proj**2 / self.variances).sum(1)  # (B,)
        outside = np.clip((x**2).sum(1) - (proj**2).sum(1), 0, None) / self.rest_variance  # (B,)
        return np.sqrt((inside + outside) / self.feature_dim)  # (B,)

    def set_threshold(self, held_out: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
        """Threshold = the ``quantile`` of the distances of held-out features (N, F)."""
        if not 0.5 <= quantile < 1.0:
            raise ValueError("quantile must be in [0.5, 1)")
        d = self.distance(held_out)
        self.threshold = float(np.quantile(d.astype(np.float64), quantile))
        self.quantile, self.held_out = float(quantile), int(d.size)
        return self.threshold

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "domain.mean": np.ascontiguousarray(self.mean),
            "domain.directions": np.ascontiguousarray(self.directions),
            "domain.variances": np.ascontiguousarray(self.variances),
        }

    def facts(self) -> dict:
        return {
            "threshold": self.threshold,
            "quantile": self.quantile,
            "rest_variance": self.rest_variance,
            "shrinkage": self.shrinkage,
            "rank": int(self.variances.size),
            "feature_dim": self.feature_dim,
            "images": self.images,
            "held_out": self.held_out,
            "distance": "Mahalanobis distance / sqrt(feature_dim) under the shrunk training covariance",
        }


# ---------------------------------------------------------------------- both, in a checkpoint
@dataclass
class TrustStats:
    """Everything a checkpoint knows about how far to trust its captions."""

    calibration: Calibration | None = None
    domain: DomainModel | None = None
    trained_on: str = ""  # one sentence for people: what the training images were

    def confidence(self, stats: list[float]) -> list[float] | None:
        if self.calibration is None:
            return None
        return [float(v) for v in self.calibration.confidence(stats)]

    def describe(self) -> dict:
        return {
            "trained_on": self.trained_on,
            "calibration": None
            if self.calibration is None
            else {k: v for k, v in self.calibration.to_dict().items() if not k.startswith("knots")},
            "domain": None if self.domain is None else self.domain.facts(),
        }


def save_trust(folder: str | os.PathLike, trust: TrustStats) -> Path:
    """Write ``trust.json`` (and ``trust.safetensors`` when there is a domain model) into a
    checkpoint folder, each file replaced atomically. Returns the JSON path."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder")
    config = {
        "format": TRUST_FORMAT,
        "trained_on": trust.trained_on,
        "calibration": None if trust.calibration is None else trust.calibration.to_dict(),
        "domain": None if trust.domain is None else trust.domain.facts(),
    }
    if trust.domain is not None:
        tensors = trust.domain.tensors()
        atomic_write_path(
            folder / TRUST_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": TRUST_FORMAT})
        )
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    atomic_write_path(folder / TRUST_CONFIG, lambda p: p.write_text(text, encoding="utf-8"))
    return folder / TRUST_CONFIG


_said_missing: set[str] = set()


def load_trust(folder: str | os.PathLike) -> TrustStats:
    """The trust statistics of a checkpoint folder; empty (every field None) when it has none,
    which is said once per folder in the log. Damaged files raise :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    path = folder / TRUST_CONFIG
    if not path.exists():
        if str(folder) not in _said_missing:
            _said_missing.add(str(folder))
            log.info(
                "%s has no confidence calibration or domain statistics (%s): captions carry no "
                "confidence or out-of-domain flag; add them with `captioner calibrate`",
                folder,
                TRUST_CONFIG,
            )
        return TrustStats()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != TRUST_FORMAT:
            raise ValueError(f"expected format {TRUST_FORMAT!r}")
        calibration = Calibration.from_dict(config["calibration"]) if config.get("calibration") else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid trust statistics ({e})") from None
    domain = None
    facts = config.get("domain")
    if facts:
        try:
            t = load_file(str(folder / TRUST_WEIGHTS))
            domain = DomainModel(
                t["domain.mean"].astype(np.float32),
                t["domain.directions"].astype(np.float32),
                t["domain.variances"].astype(np.float32),
                float(facts["rest_variance"]),
                threshold=float(facts["threshold"]),
                quantile=float(facts.get("quantile", DEFAULT_QUANTILE)),
                shrinkage=float(facts.get("shrinkage", 0.0)),
                images=int(facts.get("images", 0)),
                held_out=int(facts.get("held_out", 0)),
            )
        except (FileNotFoundError, SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / TRUST_WEIGHTS}: invalid domain statistics ({e})") from None
        d, r = domain.directions.shape
        if domain.mean.shape != (d,) or domain.variances.shape != (r,):
            raise CheckpointError(f"{folder / TRUST_WEIGHTS}: domain tensors do not fit together")
    return TrustStats(calibration=calibration, domain=domain, trained_on=str(config.get("trained_on") or ""))


# ---------------------------------------------------------------------- filling in results
#: The most confidence an out-of-domain caption gets. The calibration was fitted on
#: held-out images like the training ones, and says nothing about others: a model trained
#: on emoji scenes is, on a photo, right about essentially never, however sure its words
#: are (the attention model names "two cups and an umbrella" for a coffee photo with
#: calibrated confidence 0.92). So outside the domain the confidence is capped here.
OUT_OF_DOMAIN_CONFIDENCE = 0.05


def out_of_domain_summary(flags: Sequence[bool | None]) -> str | None:
    """ "3 of 12 images look unlike the training data", or None when none do (or none is known)."""
    known = [f for f in flags if f is not None]
    unlike = sum(1 for f in known if not f)
    if not unlike:
        return None
    total = len(flags)
    return f"{unlike} of {total} image{'s' if total != 1 else ''} look{'s' if unlike == 1 else ''} unlike the training data"


def describe_result(result, trained_on: str = "") -> str:
    """The words beside an out-of-domain caption: "outside what this model was trained on
    (emoji scenes); the CNN sees: tabby cat 42 %, tiger cat 21 %"; empty when in domain."""
    if result.in_domain is not False:
        return ""
    short = trained_on.split(":")[0] if trained_on else ""
    text = "outside what this model was trained on" + (f" ({short})" if short else "")
    if result.labels:
        text += "; the CNN sees: " + ", ".join(str(label) for label in result.labels)
    return text


TRUST_FIELDS = ("confidence", "in_domain", "domain_distance", "labels")


def result_fields(result) -> dict:
    """The trust fields of one result as JSON-ready values (labels as name/probability dicts)."""
    labels = result.labels
    return {
        "confidence": result.confidence,
        "in_domain": result.in_domain,
        "domain_distance": result.domain_distance,
        "labels": None if labels is None else [label.to_dict() for label in labels],
    }


def labels_text(labels: list | None) -> str:
    """Labels for one line or a CSV cell: "tabby 42 %; tiger cat 21 %" (empty for none)."""
    return "; ".join(str(label) for label in labels or [])
