"""Hypergradients of a bilevel problem: Hessian-vector products, conjugate gradient, implicit and explicit forms.

Bi-DFCL (arXiv 2510.19517, §4 and Alg. 4; METHOD.md §6) minimises an upper loss L_up(θ*(φ)) where
θ*(φ) ∈ argmin_θ L_low(φ, θ). From ∇_θ L_low(φ, θ*) = 0 the implicit function theorem gives

    dL_up/dφ = −Jᵀ H⁻¹ ∇_θ L_up,   H = ∇²_θθ L_low (P_θ × P_θ),   J = ∇²_θφ L_low (P_θ × P_φ).

H is never formed: conjugate gradient solves (H + δI) v = ∇_θ L_up from products Hp = ∇_θ(pᵀ ∇_θ L_low), and
Jᵀv = ∇_φ(vᵀ ∇_θ L_low) with v held constant. Both come from one graph of ∇_θ L_low built with
create_graph=True, so the lower loss is evaluated once per hypergradient. Vectors over parameters are flat
(P,) tensors; parameters are lists of tensors (a network's `parameters()`), so no gradient is derived by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat (P,) vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into tensors shaped like `like` (inverse of `flatten`)."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries, the parameters have {sum(sizes)}")
    return [piece.view_as(t) for piece, t in zip(torch.split(vector, sizes), like, strict=True)]


def _grad_or_zero(
    output: torch.Tensor,
    params: Sequence[torch.Tensor],
    create_graph: bool = False,
    retain_graph: bool = True,
    grad_outputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flat ∇_params ⟨grad_outputs, output⟩ (grad_outputs defaults to 1 for a scalar); unused parameters get 0.

    Passing a vector as grad_outputs gives ∇(vᵀ output) without building the dot product's node.
    """
    grads = torch.autograd.grad(
        output,
        list(params),
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])


def lower_gradient(lower_loss: torch.Tensor, inner_params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flat (P_θ,) ∇_θ L_low with its graph kept, ready for Hessian-vector products and for ∇_φ(vᵀ∇_θ L_low)."""
    return _grad_or_zero(lower_loss, inner_params, create_graph=True)


def hessian_vector_product(
    inner_gradient: torch.Tensor, inner_params: Sequence[torch.Tensor], vector: torch.Tensor
) -> torch.Tensor:
    """H p = ∇_θ(pᵀ ∇_θ L_low) by double backward; `inner_gradient` from `lower_gradient` (graph retained)."""
    if vector.shape != inner_gradient.shape:
        raise ValueError(f"vector has shape {tuple(vector.shape)}, expected {tuple(inner_gradient.shape)}")
    return _grad_or_zero(inner_gradient, inner_params, grad_outputs=vector.detach())


@dataclass(frozen=True)
class CGResult:
    """Approximate solution of (H + δI) v = b and how the solver stopped."""

    solution: torch.Tensor  # (P,) v
    iterations: int  # Hessian-vector products used
    residual: float  # ‖b − (H + δI) v‖ at exit
    negative_curvature: bool  # stopped because pᵀ(H + δI)p ≤ 0
    rhs_norm: float  # ‖b‖

    @property
    def relative_residual(self) -> float:
        """‖b − (H + δI) v‖ / ‖b‖ (0 for b = 0)."""
        return self.residual / self.rhs_norm if self.rhs_norm > 0 else 0.0


def conjugate_gradient(
    matvec: Matvec, rhs: torch.Tensor, max_iter: int = 50, tol: float = 1e-4, damping: float = 0.0
) -> CGResult:
    """Solve (H + δI) v = rhs by conjugate gradient from v = 0 (Bi-DFCL Alg. 4; METHOD.md §8.7).

    Stops when ‖r‖ ≤ tol·‖rhs‖ (relative, so the tolerance does not depend on the loss scale), after
    `max_iter` products, or when a search direction has non-positive curvature pᵀ(H + δI)p ≤ 0: the Hessian of
    an MLP loss is not positive definite, and CG's step length is meaningless there, so the current iterate
    is returned (v = 0 if it happens on the first direction).
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if tol < 0 or damping < 0:
        raise ValueError(f"tol and damping must be >= 0, got tol={tol}, damping={damping}")
    rhs = rhs.detach()
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()  # r = b − A·0
    direction = residual.clone()
    rr = float(residual @ residual)
    rhs_norm = rr**0.5
    threshold = tol * rhs_norm
    iterations = 0
    while iterations < max_iter and rr**0.5 > threshold:
        product = matvec(direction).detach() + damping * direction  # (H + δI) p
        iterations += 1
        curvature = float(direction @ product)
        if curvature <= 0.0:
            return CGResult(solution, iterations, rr**0.5, True, rhs_norm)
        step = rr / curvature
        solution = solution + step * direction
        residual = residual - step * product
        rr_next = float(residual @ residual)
        direction = residual + (rr_next / rr) * direction
        rr = rr_next
    return CGResult(solution, iterations, rr**0.5, False, rhs_norm)


def mixed_vector_product(
    inner_gradient: torch.Tensor, outer_params: Sequence[torch.Tensor], vector: torch.Tensor
) -> torch.Tensor:
    """Jᵀ v = ∇_φ(vᵀ ∇_θ L_low) with v held constant: flat (P_φ,)."""
    return _grad_or_zero(inner_gradient, outer_params, grad_outputs=vector.detach())


@dataclass(frozen=True)
class Hypergradient:
    """dL_up/dφ as one tensor per outer parameter, and the CG record (None for the explicit form)."""

    grads: list[torch.Tensor]
    cg: CGResult | None


def implicit_hypergradient(
    lower_loss: torch.Tensor,
    inner_params: Sequence[torch.Tensor],
    outer_params: Sequence[torch.Tensor],
    upper_gradient: torch.Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    damping: float = 0.0,
    average: Matvec | None = None,
) -> Hypergradient:
    """dL_up/dφ = −Jᵀ (H + δI)⁻¹ ∇_θ L_up at the inner solution (Bi-DFCL §4, Alg. 4; METHOD.md §6).

    lower_loss: scalar L_low(φ, θ*) whose graph reaches φ (the gates) and θ; inner_params: θ (at θ*);
    outer_params: φ; upper_gradient: flat (P_θ,) ∇_θ L_up(θ*). The direct term ∂L_up/∂φ is zero here (the
    bridge is not used on RCT rows), so it is not added. `average` (data-parallel runs, `training.scale`)
    averages every Hessian-vector and Jᵀv product over ranks, so each rank solves with the H and J of the
    union of the ranks' lower batches.
    """
    mean = average or (lambda t: t)
    inner_gradient = lower_gradient(lower_loss, inner_params)  # (P_θ,) with graph
    if upper_gradient.shape != inner_gradient.shape:
        raise ValueError(
            f"upper_gradient has shape {tuple(upper_gradient.shape)}, expected {tuple(inner_gradient.shape)}"
        )
    cg = conjugate_gradient(
        lambda p: mean(hessian_vector_product(inner_gradient, inner_params, p)),
        upper_gradient,
        max_iter=max_iter,
        tol=tol,
        damping=damping,
    )
    flat = -mean(mixed_vector_product(inner_gradient, outer_params, cg.solution))
    return Hypergradient(unflatten(flat, outer_params), cg)


def explicit_hypergradient(
    lower_loss: torch.Tensor,
    inner_params: Sequence[torch.Tensor],
    outer_params: Sequence[torch.Tensor],
    upper_gradient: torch.Tensor,
    step_size: float,
    average: Matvec | None = None,
) -> Hypergradient:
    """One-step unrolled hypergradient −α_θ Jᵀ ∇_θ L_up (H⁻¹ ≈ α_θ I; Bi-DFCL App. A.5, METHOD.md §6).

    From θ* ≈ θ − α_θ ∇_θ L_low(φ, θ): dθ*/dφ = −α_θ J. Same arguments as `implicit_hypergradient`.
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    inner_gradient = lower_gradient(lower_loss, inner_params)
    if upper_gradient.shape != inner_gradient.shape:
        raise ValueError(
            f"upper_gradient has shape {tuple(upper_gradient.shape)}, expected {tuple(inner_gradient.shape)}"
        )
    mean = average or (lambda t: t)
    flat = -step_size * mean(mixed_vector_product(inner_gradient, outer_params, upper_gradient))
    return Hypergradient(unflatten(flat, outer_params), None)
