"""Exploration: a share ε of decisions drawn uniformly among each individual's allowed treatments.

The draw is a hash of (campaign, individual id, UTC day), not a random number: a retried request, or the
same individual seen twice in one day, gets the same arm and the same flag. Writes no Redis keys.

Propensity of the treatment finally given, P(t) = ε/K_allowed + (1 − ε)·[t = policy choice]: an exploit row
carries 1 − ε + ε/K_allowed, an exploration row that landed elsewhere ε/K_allowed. Exploration rows are an RCT
(uniform given the flag, whatever the features); the rest are observational logs of the policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

_SCALE = float(2**64)


@dataclass(frozen=True)
class Explored:
    treatment: NDArray[np.int64]  # (N,) the treatment given
    propensity: NDArray[np.float64]  # (N,) probability with which it was given
    explore: NDArray[np.bool_]  # (N,) drawn by exploration (whatever arm it landed on)


def utc_day(timestamp: float) -> str:
    return _day_text(int(timestamp // 86_400))


@lru_cache(maxsize=8)
def _day_text(day: int) -> str:
    """The date of a day number since the epoch (cached: every request asks, `strftime` is a few µs)."""
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def draws(campaign: str, ids: Sequence[str | int], day: str) -> tuple[NDArray[np.float64], NDArray[np.uint64]]:
    """(N,) uniform u in [0, 1) deciding explore-or-not and (N,) integers picking the arm, per individual."""
    n = len(ids)
    coin = np.empty(n, dtype=np.float64)
    pick = np.empty(n, dtype=np.uint64)
    head = f"{campaign}\x1f{day}\x1f".encode()
    for i, identifier in enumerate(ids):
        digest = hashlib.blake2b(head + str(identifier).encode(), digest_size=16).digest()
        coin[i] = int.from_bytes(digest[:8], "little") / _SCALE
        pick[i] = int.from_bytes(digest[8:], "little")
    return coin, pick


def explore(
    policy: NDArray[np.int64],
    allowed: NDArray[np.bool_] | None,
    n_treatments: int,
    epsilon: float,
    campaign: str,
    ids: Sequence[str | int],
    day: str,
) -> Explored:
    """Override the policy's (N,) choice for the ε share of individuals; propensities for every row."""
    n = policy.shape[0]
    n_allowed = np.full(n, n_treatments, dtype=np.int64) if allowed is None else allowed.sum(axis=1).astype(np.int64)
    if epsilon <= 0.0:
        return Explored(policy, np.ones(n), np.zeros(n, dtype=bool))
    coin, pick = draws(campaign, ids, day)
    flag = coin < epsilon
    rank = (pick % n_allowed.astype(np.uint64)).astype(np.int64)  # (N,) which allowed arm, in id order
    # The rank-th allowed treatment of each row: the first column where the running count of allowed passes rank.
    arm = rank if allowed is None else np.argmax(np.cumsum(allowed, axis=1) > rank[:, None], axis=1).astype(np.int64)
    treatment = np.where(flag, arm, policy)
    propensity = epsilon / n_allowed + (1.0 - epsilon) * (treatment == policy)
    return Explored(treatment.astype(np.int64), propensity, flag)
