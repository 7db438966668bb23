"""DFCL training losses on randomised (RCT) mini-batches: prediction losses and decision-focused losses.

Every loss takes the network's (B, 2K) outputs (first K predicted revenue, last K predicted cost, see
`training.network`) and a `FactualBatch`, and returns a scalar to minimise. Papers: DFCL = Zhou et al.,
"Decision Focused Causal Learning for Direct Counterfactual Marketing Optimization", arXiv 2407.13664;
equations as transcribed in METHOD.md §5. IPW weights use the propensities of the whole table
(`batch.propensity`), and the batch size B stands in for N, so each loss is an unbiased per-capita estimate
whose scale does not depend on B.

The DPM / DHCL loss (arXiv 2211.15728) is deliberately left out: its formula is not in any text we could
read (METHOD.md §4, §8.15), and a guessed reconstruction would be reported under the paper's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from service.decision import choose
from training.batch import FactualBatch

# Probabilities are clamped to [BCE_EPS, 1 − BCE_EPS] before the log so a saturated sigmoid head gives a
# finite loss (float32 resolves 1 − 1e-7).
BCE_EPS = 1e-7
CLIPS = ("fix", "max", "none")
ESTIMATORS = ("ht", "hajek")


def _check_outputs(outputs: torch.Tensor, batch: FactualBatch) -> int:
    """Validate (B, 2K) outputs against the batch; return K."""
    k = batch.n_treatments
    if outputs.ndim != 2 or outputs.shape != (batch.size, 2 * k):
        raise ValueError(
            f"outputs has shape {tuple(outputs.shape)}, expected (batch size, 2K) = ({batch.size}, {2 * k})"
        )
    return k


def _check_lams(lams: Sequence[float]) -> list[float]:
    values = [float(lam) for lam in lams]
    if not values or not all(np.isfinite(lam) and lam >= 0 for lam in values):
        raise ValueError(f"lams must be a non-empty sequence of finite numbers >= 0, got {tuple(lams)}")
    return values


def _cell_loss(prediction: torch.Tensor, label: torch.Tensor, binary: bool) -> torch.Tensor:
    """(B,) per-row loss of one factual cell: squared error, or BCE on a sigmoid head's probability."""
    label = label.to(prediction.dtype)
    if not binary:
        return (label - prediction) ** 2
    p = prediction.clamp(BCE_EPS, 1.0 - BCE_EPS)
    return -(label * torch.log(p) + (1.0 - label) * torch.log1p(-p))


def _factual_row_loss(outputs: torch.Tensor, batch: FactualBatch) -> torch.Tensor:
    """(B,) revenue loss + cost loss on each row's logged treatment cell (r̂_{i,t_i}, ĉ_{i,t_i})."""
    k = _check_outputs(outputs, batch)
    rows = torch.arange(batch.size, device=outputs.device)
    revenue_hat = outputs[rows, batch.treatment]  # (B,) r̂_{i,t_i}
    cost_hat = outputs[rows, k + batch.treatment]  # (B,) ĉ_{i,t_i}
    return _cell_loss(revenue_hat, batch.revenue, batch.binary_revenue) + _cell_loss(
        cost_hat, batch.cost, batch.binary_cost
    )


def factual_loss(outputs: torch.Tensor, batch: FactualBatch) -> torch.Tensor:
    """Plain factual loss of the two-stage S-learner TSM-SL (METHOD.md §3).

    (1/B) Σ_i [ℓ(r_i, r̂_{i,t_i}) + ℓ(c_i, ĉ_{i,t_i})], ℓ = squared error, or BCE on binary labels (DFCL code,
    Criteo). Unweighted: rows count equally whatever their treatment.
    """
    return _factual_row_loss(outputs, batch).mean()


def prediction_loss(outputs: torch.Tensor, batch: FactualBatch) -> torch.Tensor:
    """DFCL prediction loss L_pred, IPW form (DFCL App. A; METHOD.md §5.1).

    L_pred = (1/K) Σ_i (1/N_{t_i}) [ℓ(r_i, r̂_{i,t_i}) + ℓ(c_i, ĉ_{i,t_i})] with N_{t_i} = B·p_{t_i} (table-level
    propensities), i.e. (1/(BK)) Σ_i ℓ_i / p_{t_i}: under randomisation an unbiased estimate of the full-surface
    mean loss per cell (1/(NK)) Σ_ij ℓ_ij. ℓ = squared error, or BCE on binary labels.
    """
    row_loss = _factual_row_loss(outputs, batch)  # (B,)
    ipw = batch.ipw.to(outputs.dtype)  # (B,) 1/p_{t_i}
    return (ipw * row_loss).sum() / (batch.size * batch.n_treatments)


def policy_learning_loss(
    outputs: torch.Tensor, batch: FactualBatch, lams: Sequence[float] = (0.1, 0.5, 1.0), tau: float = 1.0
) -> torch.Tensor:
    """DFCL-PL policy-learning loss L_PLL (DFCL, Thm 2; METHOD.md §5.3), with temperature τ.

    π_ij(λ) = softmax_j((r̂_ij − λĉ_ij)/τ);  L = −Σ_{λ∈Λ} (1/B) Σ_i (N/N_{t_i}) (r_i − λc_i) π_{i,t_i}(λ).
    The IPW factor N/N_{t_i} = 1/p_{t_i} makes the batch mean an unbiased estimate of the softmax-relaxed
    dual decision value Σ_j (r_ij − λc_ij) π_ij (Bi-DFCL A.7 keeps it; the DFCL Criteo demo drops it).
    """
    k = _check_outputs(outputs, batch)
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    revenue_hat, cost_hat = outputs[:, :k], outputs[:, k:]  # (B, K) each
    rows = torch.arange(batch.size, device=outputs.device)
    revenue = batch.revenue.to(outputs.dtype)  # (B,) r_i
    cost = batch.cost.to(outputs.dtype)  # (B,) c_i
    ipw = batch.ipw.to(outputs.dtype)  # (B,) N/N_{t_i}
    total = outputs.new_zeros(())
    for lam in _check_lams(lams):
        policy = torch.softmax((revenue_hat - lam * cost_hat) / tau, dim=1)  # (B, K) π(λ)
        reward = revenue - lam * cost  # (B,) r_i − λc_i
        total = total - (ipw * reward * policy[rows, batch.treatment]).mean()
    return total


def max_entropy_loss(
    outputs: torch.Tensor, batch: FactualBatch, lams: Sequence[float] = (0.1, 0.5, 1.0), tau: float = 3.0
) -> torch.Tensor:
    """DFCL-MER maximum-entropy-regularised loss L_MERL (DFCL; METHOD.md §5.4).

    Relaxing z to the simplex and adding the entropy −τ Σ_j z_ij ln z_ij makes the optimal decision
    z_ij = softmax_j((r̂_ij − λĉ_ij)/τ), so L_MERL is L_PLL with temperature τ (τ = 1 is DFCL-PL). Default τ = 3
    is the DFCL code's Criteo value; the marketing experiments used 0.01.
    """
    return policy_learning_loss(outputs, batch, lams=lams, tau=tau)


def _value_change(reward: torch.Tensor, ipw: torch.Tensor, matched: torch.Tensor, estimator: str) -> torch.Tensor:
    """(B,) change of the EOM value V(λ) when row i alone flips into (mismatched) or out of (matched) t_i.

    reward: (B,) u_i = r_i − λc_i; ipw: (B,) 1/p_{t_i}; matched: (B,) bool, current choice ĵ_i == t_i.
    'ht': V = (1/B) Σ_matched u_i/p_{t_i} (Bi-DFCL Alg. 5), ΔV = ±u_i/(B p_{t_i}).
    'hajek': V = Σ_matched (u_i/p_{t_i}) / S, S = Σ_matched 1/p_{t_i} (DFCL code), updated exactly.
    """
    if estimator == "ht":
        weight = ipw / reward.shape[0]  # (B,) w_i = 1/(B p_{t_i})
        return torch.where(matched, -weight * reward, weight * reward)
    mass = (ipw * matched).sum()  # S
    value = (ipw * reward * matched).sum() / mass if bool(mass > 0) else mass.new_zeros(())
    mass_in = mass + ipw  # (B,) S after a mismatched row joins
    mass_out = mass - ipw  # (B,) S after a matched row leaves (0 when it was the only one)
    value_in = (mass * value + ipw * reward) / mass_in
    leaves_some = mass_out > 1e-9 * ipw
    value_out = torch.where(leaves_some, (mass * value - ipw * reward) / mass_out.where(leaves_some, ipw), 0.0)
    return torch.where(matched, value_out, value_in) - value


def ifd_gradients(
    revenue_hat: torch.Tensor,
    cost_hat: torch.Tensor,
    batch: FactualBatch,
    lam: float,
    *,
    h: float = 0.3,
    clip: str = "fix",
    eps: float = 1e-6,
    estimator: str = "ht",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Improved finite-difference estimate (g^r, g^c) of ∂V(λ)/∂r̂ and ∂V(λ)/∂ĉ (DFCL Alg. 2; METHOD.md §5.5).

    revenue_hat, cost_hat: (B, K) predictions (detached inside). Rows decide independently, so each row's
    smallest choice-flipping perturbation changes V(λ) by a closed-form ΔV_i:
      ĵ_i ≠ t_i: flip into t_i, ΔV_i = +w_i u_i; δ_i = s_ĵ − s_t + ε: +δ on r̂_{i,t}, −δ on r̂_{i,ĵ},
                 −δ/λ on ĉ_{i,t}, +δ/λ on ĉ_{i,ĵ};
      ĵ_i = t_i: flip to the runner-up j2, ΔV_i = −w_i u_i; δ_i = s_t − s_j2 + ε: −δ on r̂_{i,t}, +δ on r̂_{i,j2},
                 +δ/λ on ĉ_{i,t}, −δ/λ on ĉ_{i,j2};
    with s = r̂ − λĉ, u_i = r_i − λc_i, w_i = 1/(B p_{t_i}). Each of the two cells gets g = ΔV_i / its signed
    perturbation, all other cells 0. clip: 'none' keeps that; 'fix' keeps cells with |perturbation| < h and
    divides by ±h instead (the one-sided finite difference with step h), zeroing the rest; 'max' divides every
    cell by ±(the batch's largest |perturbation|). At λ = 0 costs do not move the choice: g^c = 0.
    Returns two (B, K) tensors of the predictions' dtype, without gradient.
    """
    if clip not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0, got {h}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if batch.n_treatments < 2:
        raise ValueError(f"the decision losses need at least 2 treatments, batch has {batch.n_treatments}")
    with torch.no_grad():
        R, C = revenue_hat.detach(), cost_hat.detach()  # (B, K)
        treatment = batch.treatment.to(R.device)  # (B,) t_i
        rows = torch.arange(R.shape[0], device=R.device)
        score = R - lam * C  # (B, K) s = S(λ)
        # The serving rule (ties → cheaper arm), so training flips exactly the choices the service makes.
        chosen = torch.as_tensor(choose(R.double().cpu().numpy(), C.double().cpu().numpy(), lam), device=R.device)
        matched = chosen == treatment  # (B,)
        others = score.scatter(1, treatment[:, None], -torch.inf)  # (B, K) s without the logged arm
        partner = torch.where(matched, others.argmax(dim=1), chosen)  # (B,) ĵ if mismatched, j2 if matched
        delta = (score[rows, treatment] - score[rows, partner]).abs() + eps  # (B,) smallest flipping shift
        reward = batch.revenue.to(R) - lam * batch.cost.to(R)  # (B,) u_i
        change = _value_change(reward, batch.ipw.to(R), matched, estimator)  # (B,) ΔV_i

        # Signed perturbation of r̂_{i,t_i}: up when t_i must win, down when it must lose; the partner moves the
        # other way, and a cost moves opposite to its revenue by δ/λ (s = r̂ − λĉ).
        step_r = torch.where(matched, -delta, delta)  # (B,)
        g_r = truncated_difference(change, step_r, h, clip)  # (B,) for r̂_{i,t_i}; the partner gets −g_r
        g_c = truncated_difference(change, -step_r / lam, h, clip) if lam > 0 else torch.zeros_like(g_r)

        grad_r = torch.zeros_like(R)
        grad_c = torch.zeros_like(C)
        grad_r[rows, treatment], grad_r[rows, partner] = g_r, -g_r
        grad_c[rows, treatment], grad_c[rows, partner] = g_c, -g_c
    return grad_r, grad_c


def truncated_difference(change: torch.Tensor, step: torch.Tensor, h: float, clip: str) -> torch.Tensor:
    """ΔV / step per cell with DFCL's truncation (METHOD.md §5.5 step 3), for DFCL-IFD and Bi-DFCL's PIFD alike.

    change, step: same shape; step is each cell's signed perturbation (never 0). 'none': ΔV/step; 'fix' (the
    DFCL code's default): cells with |step| < h get ΔV/(±h), the rest 0; 'max': ΔV/(±max|step|) over the batch.
    """
    if clip == "none":
        return change / step
    if clip == "max":
        return change / (torch.sign(step) * step.abs().max())
    keep = step.abs() < h
    return torch.where(keep, change / (torch.sign(step) * h), 0.0)


def ifd_loss(
    outputs: torch.Tensor,
    batch: FactualBatch,
    lams: Sequence[float] = (0.1, 0.5, 1.0),
    h: float = 0.3,
    clip: str = "fix",
    eps: float = 1e-6,
    estimator: str = "ht",
) -> torch.Tensor:
    """DFCL-IFD surrogate loss L_IFDL (DFCL Alg. 2; METHOD.md §5.5 step 4).

    L = −Σ_{λ∈Λ} Σ_ij [sg(g^r_ij) r̂_ij + sg(g^c_ij) ĉ_ij], g from `ifd_gradients` (sg = stop-gradient). Its
    gradient with respect to the predictions is −g, so a descent step moves r̂, ĉ along the estimated ∂V/∂ and
    raises the EOM value V(λ). The 1/B per-capita scale is inside g (w_i = 1/(B p_{t_i})), so it is not applied
    again. The value of L is only a carrier of the gradient.
    """
    k = _check_outputs(outputs, batch)
    revenue_hat, cost_hat = outputs[:, :k], outputs[:, k:]  # (B, K) each
    total = outputs.new_zeros(())
    for lam in _check_lams(lams):
        g_r, g_c = ifd_gradients(revenue_hat, cost_hat, batch, lam, h=h, clip=clip, eps=eps, estimator=estimator)
        total = total - (g_r * revenue_hat).sum() - (g_c * cost_hat).sum()
    return total


LossFn = Callable[..., torch.Tensor]

# Method name (as in TrainConfig.method) → decision loss, called as loss(outputs, batch, **hyperparameters).
LOSSES: dict[str, LossFn] = {
    "dfcl-pl": policy_learning_loss,
    "dfcl-mer": max_entropy_loss,
    "dfcl-ifd": ifd_loss,
}


def combined_loss(
    outputs: torch.Tensor, batch: FactualBatch, decision: LossFn, alpha: float, **kw: Any
) -> torch.Tensor:
    """DFCL joint loss L_DFCL = α·L_pred + L_dec (DFCL; METHOD.md §5.6); kw go to the decision loss."""
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    decision_part = decision(outputs, batch, **kw)
    if alpha == 0:
        return decision_part
    return alpha * prediction_loss(outputs, batch) + decision_part
