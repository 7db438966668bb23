"""Bi-DFCL upper-level decision losses on RCT rows (PPL, PIFD) and the IPW λ* they are evaluated at.

Both losses score the relaxed decision z′ = softmax_j((r̂ − λ*ĉ)/τ) of the target network's predictions on a
randomised batch. λ* is the multiplier whose IPW realised per-capita cost on the batch fits the budget
(METHOD.md §1, §8.5), chosen by the same rule evaluation and validation use (`evaluate.affordable_policy`):
Bi-DFCL Alg. 2 bisects for it; here it is read off the exact step function c̄(λ), with ties broken towards the
cheaper arm as `service.decision.choose` (the serving rule) does. λ* enters the losses as a constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from service.decision import choose
from training.batch import FactualBatch
from training.evaluate import affordable_policy
from training.losses import CLIPS, truncated_difference


def ipw_policy_value(
    revenue_hat: NDArray[np.floating], cost_hat: NDArray[np.floating], batch: FactualBatch, lam: float
) -> tuple[float, float]:
    """IPW realised per-capita (revenue, cost) of argmax_j (r̂ − λĉ) on RCT rows (EOM, METHOD.md §7).

    r̄(λ) = (1/N) Σ_i r_i 1[t_i = ĵ_i(λ)] / p_{t_i}, c̄(λ) likewise (Horvitz–Thompson form).
    """
    chosen = choose(revenue_hat, cost_hat, lam)  # (N,)
    treatment = batch.treatment.numpy()
    weight = np.where(chosen == treatment, batch.ipw.double().numpy(), 0.0)  # (N,) 1[t = ĵ]/p_t
    n = max(len(treatment), 1)
    return float(weight @ batch.revenue.double().numpy()) / n, float(weight @ batch.cost.double().numpy()) / n


def ipw_cost_path(
    revenue_hat: NDArray[np.floating], cost_hat: NDArray[np.floating], batch: FactualBatch
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Exact IPW realised per-capita cost c̄(λ) of argmax_j (r̂ − λĉ) on RCT rows, as a step function of λ ≥ 0.

    Returns (breaks, cost), breaks ascending with breaks[0] = 0: c̄(λ) = cost[m] on [breaks[m], breaks[m+1]).
    Row i counts in c̄(λ) = (1/N) Σ_i c_i 1[ĵ_i(λ) = t_i] / p_{t_i} on the λ where its logged arm t_i wins, and
    those λ form one interval: t_i beats arm j iff (r̂_it − r̂_ij) ≥ λ(ĉ_it − ĉ_ij), a half-line in λ. Ties go to
    the cheaper arm as in `service.decision.choose`, so the interval is [lower_i, upper_i). O(NK + N log N), exact,
    where the papers bisect (Bi-DFCL Alg. 2).
    """
    R = np.asarray(revenue_hat, dtype=np.float64)  # (N, K)
    C = np.asarray(cost_hat, dtype=np.float64)
    treatment = batch.treatment.numpy()
    rows = np.arange(len(treatment))
    weighted_cost = (batch.cost.double() * batch.ipw.double()).numpy() / max(len(treatment), 1)  # (N,) c_i/(N p_t)
    d_rev = R[rows, treatment][:, None] - R  # (N, K) r̂_it − r̂_ij
    d_cost = C[rows, treatment][:, None] - C  # (N, K) ĉ_it − ĉ_ij
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d_rev / d_cost
    # Cheaper rivals (d_cost > 0) win once λ reaches the ratio; dearer rivals (d_cost < 0) lose from the ratio on.
    upper = np.where(d_cost > 0, ratio, np.inf).min(axis=1)  # (N,)
    lower = np.maximum(np.where(d_cost < 0, ratio, -np.inf).max(axis=1), 0.0)  # (N,)
    # Rivals of equal cost: t_i wins for every λ or for none (equal score → the lower index, as `choose` does).
    other = np.arange(R.shape[1])[None, :] != treatment[:, None]
    beats_equal = (d_rev > 0) | ((d_rev == 0) & (treatment[:, None] < np.arange(R.shape[1])[None, :]))
    feasible = np.all(~other | (d_cost != 0) | beats_equal, axis=1) & (lower < upper)
    starts, ends = lower[feasible], upper[feasible]
    weight = weighted_cost[feasible]
    breaks = np.unique(np.concatenate([[0.0], starts, ends[np.isfinite(ends)]]))  # (M,)
    by_start, by_end = np.argsort(starts), np.argsort(ends)
    entered = np.concatenate([[0.0], np.cumsum(weight[by_start])])
    left = np.concatenate([[0.0], np.cumsum(weight[by_end])])
    # Rows counted at λ: started at or before λ, not yet ended at λ.
    cost = entered[np.searchsorted(starts[by_start], breaks, side="right")]
    cost = cost - left[np.searchsorted(ends[by_end], breaks, side="right")]
    return breaks, cost


def ipw_lambdas(
    revenue_hat: NDArray[np.floating],
    cost_hat: NDArray[np.floating],
    batch: FactualBatch,
    budgets_per_capita: Sequence[float],
) -> list[float]:
    """λ*(b) per budget on the IPW realised per-capita cost c̄(λ) of RCT rows (METHOD §1, §8.5).

    revenue_hat, cost_hat: (N, K) predictions on the rows of `batch`. c̄ is a noisy estimate and need not be
    monotone in λ, so "the λ that fits" needs a rule; it is the one evaluation and validation use
    (`training.evaluate.affordable_policy`): walk from the cheapest policy (largest λ) towards λ = 0 and stop
    before the first policy that overspends. Returned is the smallest λ of the policy kept; if even the
    cheapest predicted policy overspends, the λ from which it holds.
    """
    for budget in budgets_per_capita:
        if not np.isfinite(budget):
            raise ValueError(f"budget_per_capita must be finite, got {budget}")
    breaks, cost = ipw_cost_path(revenue_hat, cost_hat, batch)
    # Policies from the cheapest (the last step, largest λ) to the dearest (the first step, λ = 0).
    kept = affordable_policy(cost[::-1][None, :], np.asarray(budgets_per_capita, dtype=np.float64))[0]  # (L,)
    return [float(breaks[len(breaks) - 1 - int(index)]) for index in kept]


def ipw_lambda(
    revenue_hat: NDArray[np.floating], cost_hat: NDArray[np.floating], batch: FactualBatch, budget_per_capita: float
) -> float:
    """`ipw_lambdas` for one per-capita budget."""
    return ipw_lambdas(revenue_hat, cost_hat, batch, [budget_per_capita])[0]


def relaxed_decision(revenue_hat: torch.Tensor, cost_hat: torch.Tensor, lam: float, tau: float) -> torch.Tensor:
    """(N, K) z′ = softmax_j((r̂_ij − λĉ_ij)/τ): the maximum-entropy relaxation of the argmax (DFCL Eq. MER)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.softmax((revenue_hat - lam * cost_hat) / tau, dim=1)


def ppl_loss(
    revenue_hat: torch.Tensor, cost_hat: torch.Tensor, batch: FactualBatch, lam: float, tau: float = 1.0
) -> torch.Tensor:
    """Policy-learning loss L_PPL = −(1/|b_R|) Σ_i z′_{i,t_i} r_i / p_{t_i} (Bi-DFCL Eq. 15 / App. A.3).

    z′ = softmax_j((r̂ − λ*ĉ)/τ) with λ* a constant; an unbiased softened form of the decision loss
    L_DL = −E_i[(N/N_{t_i}) z*_{i,t_i} r_i] (Bi-DFCL Eq. 11). revenue_hat, cost_hat: (N, K) with gradients.
    """
    z = relaxed_decision(revenue_hat, cost_hat, lam, tau)  # (N, K)
    factual = z.gather(1, batch.treatment[:, None]).squeeze(1)  # (N,) z′_{i,t_i}
    return -(factual * batch.revenue * batch.ipw).mean()


def pifd_gradient(
    revenue_hat: torch.Tensor,
    cost_hat: torch.Tensor,
    batch: FactualBatch,
    lam: float,
    h: float = 0.3,
    clip: str = "fix",
    eps: float = 1e-6,
) -> torch.Tensor:
    """(N, K) G ≈ ∂(−L_DL)/∂z′ of Bi-DFCL Alg. 3 (policy improved finite difference) at scores a = r̂ − λ*ĉ.

    q_i = r_i / (N p_{t_i}), ĵ = the served choice `service.decision.choose` (ties to the cheaper arm, as in
    DFCL-IFD). Matched rows (ĵ = t_i): h_{i,t_i} = max_{j≠t_i} a_ij − a_{i,t_i} ≤ 0, G_{i,t_i} = −q_i/h_{i,t_i};
    every j ≠ t_i: h_ij = a_{i,t_i} − a_ij ≥ 0, G_ij = −q_i/h_ij. Mismatched rows: h_{i,t_i} = a_{i,ĵ} − a_{i,t_i}
    > 0, G_{i,t_i} = q_i/h_{i,t_i}; h_{i,ĵ} = −h_{i,t_i}, G_{i,ĵ} = q_i/h_{i,ĵ}; other cells 0. Each |h| gets
    `eps` added (a tie is a zero gap). Truncation (METHOD.md §5.5 step 3, §8.12) is DFCL-IFD's, the same function
    (`losses.truncated_difference`): 'fix' keeps cells with |h| < `h` and divides by ±`h`, zeroing the rest;
    'max' divides every cell by the batch's largest |h|; 'none' keeps ±q/|h|.
    """
    if clip not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0, got {h}")
    R, C = revenue_hat.detach(), cost_hat.detach()
    a = R - lam * C  # (N, K) scores
    n, k = a.shape
    rows = torch.arange(n)
    t = batch.treatment
    q = (batch.revenue * batch.ipw / n).to(a.dtype)  # (N,) r_i / (N p_{t_i})
    a_t = a[rows, t]  # (N,) score of the logged arm
    j_hat = torch.as_tensor(choose(R.double().numpy(), C.double().numpy(), lam))  # (N,) the served rule
    matched = j_hat == t
    logged = torch.nn.functional.one_hot(t, k).bool()  # (N, K)
    others_best = a.masked_fill(logged, -torch.inf).amax(dim=1)  # (N,) max_{j≠t_i} a_ij
    # |h| and the sign of G per cell, written out case by case as in Alg. 3.
    gap = torch.zeros_like(a)  # (N, K) |h_ij| on the cells Alg. 3 fills
    sign = torch.zeros_like(a)  # (N, K) sign of G_ij; 0 = cell unused
    # Matched: logged cell G = −q/h with h ≤ 0 → +q/|h|; other cells G = −q/h with h ≥ 0 → −q/|h|.
    gap = torch.where(matched[:, None] & logged, (a_t - others_best)[:, None], gap)
    gap = torch.where(matched[:, None] & ~logged, a_t[:, None] - a, gap)
    sign = torch.where(matched[:, None], torch.where(logged, 1.0, -1.0), sign)
    # Mismatched: logged cell h > 0, G = +q/|h|; chosen cell h < 0, G = q/h = −q/|h|.
    chosen = torch.nn.functional.one_hot(j_hat, k).bool()
    mismatch_gap = (a[rows, j_hat] - a_t)[:, None]  # (N, 1)
    gap = torch.where(~matched[:, None] & (logged | chosen), mismatch_gap, gap)
    sign = torch.where(~matched[:, None] & logged, 1.0, sign)
    sign = torch.where(~matched[:, None] & chosen, -1.0, sign)
    used = sign != 0
    step = gap.abs() + eps  # (N, K) |h| > 0
    # G = (sign·q)/|h| on used cells, through the one truncation rule shared with DFCL-IFD (batch-wide for 'max').
    G = truncated_difference((sign * q[:, None])[used], step[used], h, clip)
    return torch.zeros_like(a).masked_scatter(used, G)


def pifd_loss(
    revenue_hat: torch.Tensor,
    cost_hat: torch.Tensor,
    batch: FactualBatch,
    lam: float,
    tau: float = 1.0,
    h: float = 0.3,
    clip: str = "fix",
) -> torch.Tensor:
    """Policy improved finite-difference loss L_PIFD = Σ_ij sg(−G_ij) z′_ij (Bi-DFCL Alg. 3, METHOD.md §6).

    G from `pifd_gradient` at a = r̂ − λ*ĉ (stop-gradient); z′ = softmax_j((r̂ − λ*ĉ)/τ) carries the gradient.
    """
    G = pifd_gradient(revenue_hat, cost_hat, batch, lam, h, clip)
    z = relaxed_decision(revenue_hat, cost_hat, lam, tau)
    return (-G.detach() * z).sum()
