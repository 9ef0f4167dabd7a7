"""Stand-in traffic for the rollout's unit tests: one version's counts over an interval."""

from __future__ import annotations

import math

from service.rollout.checks import VersionStats


def quick_traffic(requests: float, errors: float = 0.0) -> VersionStats:
    """``requests`` answered within 10 ms, ``errors`` of them 5xx, mean confidence 0.9."""
    return VersionStats(
        requests=requests,
        server_errors=errors,
        duration_buckets={0.01: requests, math.inf: requests},
        confidence_sum=0.9 * requests,
        confidence_count=requests,
    )
