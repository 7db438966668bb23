"""Bi-DFCL upper-level decision losses on RCT rows (PPL, PIFD) and the IPW λ* they are evaluated at.

Both losses score the relaxed decision z′ = softmax_j((r̂ − λ*ĉ)/τ) of the target network's predictions on a
randomised batch. λ* is the smallest multiplier whose IPW realised per-capita cost on the batch fits the budget
(METHOD.md §1, §8.5): Bi-DFCL Alg. 2 bisects for it; here it is read off the exact step function c̄(λ), with
ties broken towards the cheaper arm as `service.decision.choose` (the serving rule) does. λ* enters the losses
as a constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from service.decision import choose
from training.batch import FactualBatch


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
    """λ*(b) = min{λ ≥ 0: c̄(λ) ≤ b} per budget, on the IPW realised per-capita cost of RCT rows (METHOD §1, §8.5).

    revenue_hat, cost_hat: (N, K) predictions on the rows of `batch`. c̄ is a noisy estimate and need not be
    monotone; the smallest fitting λ is returned. If no λ fits (even everyone on their cheapest predicted arm
    overspends), the λ from which that cheapest policy holds is returned.
    """
    for budget in budgets_per_capita:
        if not np.isfinite(budget):
            raise ValueError(f"budget_per_capita must be finite, got {budget}")
    breaks, cost = ipw_cost_path(revenue_hat, cost_hat, batch)
    lams = []
    for budget in budgets_per_capita:
        fits = np.flatnonzero(cost <= budget)
        lams.append(float(breaks[fits[0]] if fits.size else breaks[-1]))
    return lams


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
    score: torch.Tensor, batch: FactualBatch, gap_quantile: float = 0.1, gap_floor: float = 1e-3
) -> torch.Tensor:
    """(N, K) G ≈ ∂(−L_DL)/∂z′ of Bi-DFCL Alg. 3 (policy improved finite difference), from scores a = r̂ − λ*ĉ.

    q_i = r_i / (N p_{t_i}), ĵ = argmax_j a_ij. Matched rows (ĵ = t_i): h_{i,t_i} = max_{j≠t_i} a_ij − a_{i,t_i} ≤ 0,
    G_{i,t_i} = −q_i/h_{i,t_i}; every j ≠ t_i: h_ij = a_{i,t_i} − a_ij ≥ 0, G_ij = −q_i/h_ij. Mismatched rows:
    h_{i,t_i} = a_{i,ĵ} − a_{i,t_i} > 0, G_{i,t_i} = q_i/h_{i,t_i}; h_{i,ĵ} = −h_{i,t_i}, G_{i,ĵ} = q_i/h_{i,ĵ};
    other cells 0. Truncation (METHOD.md §8.12): |h| is clipped below at max(gap_floor, the gap_quantile
    quantile of all |h| in the batch), so G stays bounded when a row sits on a decision boundary.
    """
    if not 0.0 <= gap_quantile <= 1.0:
        raise ValueError(f"gap_quantile must be in [0, 1], got {gap_quantile}")
    if gap_floor <= 0:
        raise ValueError(f"gap_floor must be > 0, got {gap_floor}")
    a = score.detach()
    n, k = a.shape
    rows = torch.arange(n)
    t = batch.treatment
    q = batch.revenue * batch.ipw / n  # (N,) r_i / (N p_{t_i})
    a_t = a[rows, t]  # (N,) score of the logged arm
    j_hat = a.argmax(dim=1)  # (N,)
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
    gap = gap.abs()
    floor = gap_floor
    if used.any():
        floor = max(floor, float(torch.quantile(gap[used].double(), gap_quantile)))
    return sign * q[:, None] / gap.clamp_min(floor)


def pifd_loss(
    revenue_hat: torch.Tensor,
    cost_hat: torch.Tensor,
    batch: FactualBatch,
    lam: float,
    tau: float = 1.0,
    gap_quantile: float = 0.1,
    gap_floor: float = 1e-3,
) -> torch.Tensor:
    """Policy improved finite-difference loss L_PIFD = Σ_ij sg(−G_ij) z′_ij (Bi-DFCL Alg. 3, METHOD.md §6).

    G from `pifd_gradient` at a = r̂ − λ*ĉ (stop-gradient); z′ = softmax_j((r̂ − λ*ĉ)/τ) carries the gradient.
    """
    score = revenue_hat - lam * cost_hat  # (N, K)
    G = pifd_gradient(score, batch, gap_quantile, gap_floor)
    z = relaxed_decision(revenue_hat, cost_hat, lam, tau)
    return (-G.detach() * z).sum()
