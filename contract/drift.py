"""Prediction drift, defined once: the baseline training stores in ``metadata.json`` and the
distance the service compares live predictions with.

At publish, training runs the new version on its fixed held-out test split and stores
:class:`DriftBaseline`: the share of each predicted class, and a histogram of the top-1
confidence over :data:`CONFIDENCE_EDGES`. The service keeps the same two distributions over a
sliding window of each served version's latest predictions and exports the Jensen-Shannon
distance (:func:`js_distance`, base 2: 0 for identical distributions, 1 for disjoint ones)
between live and baseline, per kind (:data:`DRIFT_KINDS`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

#: Bin edges of the top-1 confidence histogram (probability 0..1): coarse at the bottom,
#: fine at the top where a healthy model lives. Bin i holds ``EDGES[i] <= p < EDGES[i + 1]``
#: (the last bin includes 1.0).
CONFIDENCE_EDGES: Final[tuple[float, ...]] = (
    0.0,
    0.2,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    1.0,
)
CONFIDENCE_BINS: Final = len(CONFIDENCE_EDGES) - 1
#: The ``kind`` label values of ``imgcls_prediction_drift``.
CLASS_DRIFT: Final = "class"
CONFIDENCE_DRIFT: Final = "confidence"
DRIFT_KINDS: Final = (CLASS_DRIFT, CONFIDENCE_DRIFT)


class DriftBaseline(BaseModel):
    """``metadata.json``'s ``drift_baseline``: what the version predicted on its test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(ge=1, description="test images the baseline was computed on")
    class_shares: dict[str, float] = Field(
        description="share (0..1) of the test images predicted as each class, every class listed"
    )
    confidence_edges: list[float] = Field(
        default_factory=lambda: list(CONFIDENCE_EDGES),
        description="bin edges of the top-1 confidence histogram (probability)",
    )
    confidence_shares: list[float] = Field(
        description="share (0..1) of the test images whose top-1 confidence falls in each bin"
    )


def confidence_bin(confidence: float) -> int:
    """The histogram bin of a top-1 probability (values outside 0..1 land in the end bins)."""
    index = bisect.bisect_right(CONFIDENCE_EDGES, confidence) - 1
    return min(max(index, 0), CONFIDENCE_BINS - 1)


def baseline_from(
    predicted: Sequence[int], confidences: Sequence[float], class_names: Sequence[str]
) -> DriftBaseline:
    """The baseline of a version's test-split predictions: each image's predicted class index
    and its top-1 probability."""
    if len(predicted) == 0 or len(predicted) != len(confidences):
        raise ValueError("a drift baseline needs one confidence per prediction, at least one")
    class_counts = [0] * len(class_names)
    for index in predicted:
        class_counts[int(index)] += 1
    bin_counts = [0] * CONFIDENCE_BINS
    for confidence in confidences:
        bin_counts[confidence_bin(float(confidence))] += 1
    total = len(predicted)
    return DriftBaseline(
        examples=total,
        class_shares={
            name: round(count / total, 6)
            for name, count in zip(class_names, class_counts, strict=True)
        },
        confidence_shares=[round(count / total, 6) for count in bin_counts],
    )


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, so 0..1) between two histograms over the same bins;
    each is normalised to sum 1 first. An empty histogram is at distance 0 from anything (no
    evidence of drift)."""
    if len(p) != len(q):
        raise ValueError(f"histograms of {len(p)} and {len(q)} bins")
    p_total, q_total = float(sum(p)), float(sum(q))
    if p_total <= 0 or q_total <= 0:
        return 0.0
    divergence = 0.0
    for p_count, q_count in zip(p, q, strict=True):
        pi, qi = p_count / p_total, q_count / q_total
        mi = (pi + qi) / 2
        if pi > 0:
            divergence += pi * math.log2(pi / mi) / 2
        if qi > 0:
            divergence += qi * math.log2(qi / mi) / 2
    return math.sqrt(min(max(divergence, 0.0), 1.0))
