"""Hypergradient machinery checked against closed forms and finite differences (float64)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bench.tiny_bilevel import SHIPPED, Float64, Setting, TinyBilevel
from training.hypergradient import (
    conjugate_gradient,
    explicit_hypergradient,
    flatten,
    hessian_vector_product,
    implicit_hypergradient,
    lower_gradient,
    unflatten,
)
from training.network import NetworkConfig, OutcomeNet


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    """Exact comparisons need double precision; restore the default so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class RidgeBilevel:
    """Lower: L_low = (1/2n)‖Xθ − y(φ)‖² + (μ/2)‖θ‖², y = w⊙a + (1−w)⊙b, w = σ(Fφ); upper: ½‖Zθ − s‖².

    θ*(φ) = (XᵀX/n + μI)⁻¹ Xᵀy(φ)/n in closed form, so dL_up/dφ is exact by differentiating through it.
    """

    def __init__(self, seed: int = 0, n: int = 40, d: int = 6, m: int = 3, mu: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(n, d, generator=g)
        self.F = torch.randn(n, m, generator=g)
        self.a = torch.randn(n, generator=g)
        self.b = torch.randn(n, generator=g) + 1.0
        self.Z = torch.randn(10, d, generator=g)
        self.s = torch.randn(10, generator=g)
        self.phi = torch.randn(m, generator=g).requires_grad_()
        self.n, self.mu = n, mu
        self.A = self.X.T @ self.X / n + mu * torch.eye(d)

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.F @ self.phi)

    def labels(self) -> torch.Tensor:
        w = self.gates()
        return w * self.a + (1 - w) * self.b

    def theta_star(self) -> torch.Tensor:
        return torch.linalg.solve(self.A, self.X.T @ self.labels() / self.n)

    def lower(self, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.X @ theta - self.labels()).square().mean() + 0.5 * self.mu * theta.square().sum()

    def upper(self, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.Z @ theta - self.s).square().sum()

    def analytic_hypergradient(self) -> torch.Tensor:
        (grad,) = torch.autograd.grad(self.upper(self.theta_star()), self.phi)
        return grad

    def at_solution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """θ* as a leaf and the flat ∇_θ L_up(θ*)."""
        theta = self.theta_star().detach().requires_grad_()
        (upper_grad,) = torch.autograd.grad(self.upper(theta), theta)
        return theta, upper_grad


def test_implicit_hypergradient_matches_closed_form_ridge() -> None:
    problem = RidgeBilevel()
    theta, upper_grad = problem.at_solution()
    hyper = implicit_hypergradient(problem.lower(theta), [theta], [problem.phi], upper_grad, max_iter=50, tol=1e-12)
    expected = problem.analytic_hypergradient()
    assert hyper.cg is not None
    assert not hyper.cg.negative_curvature
    assert hyper.cg.iterations <= theta.numel() + 1  # CG is exact in d steps on an SPD system
    assert hyper.cg.relative_residual < 1e-10
    assert relative_error(hyper.grads[0], expected) < 1e-4


def test_implicit_hypergradient_with_network_shaped_parameter_lists() -> None:
    """Same ridge problem with θ split over two tensors (as a network's parameters() would be)."""
    problem = RidgeBilevel(seed=3, d=5)
    theta, upper_grad = problem.at_solution()
    head, tail = theta.detach()[:2].clone().requires_grad_(), theta.detach()[2:].clone().requires_grad_()
    lower = problem.lower(torch.cat([head, tail]))
    hyper = implicit_hypergradient(lower, [head, tail], [problem.phi], upper_grad, tol=1e-12)
    assert relative_error(hyper.grads[0], problem.analytic_hypergradient()) < 1e-4


def test_explicit_hypergradient_is_minus_step_times_mixed_product() -> None:
    problem = RidgeBilevel(seed=1)
    theta, upper_grad = problem.at_solution()
    step = 0.05
    hyper = explicit_hypergradient(problem.lower(theta), [theta], [problem.phi], upper_grad, step_size=step)
    # J = ∇²_θφ L_low = −(1/n) Xᵀ diag(w(1−w)(a−b)) F, so −α Jᵀ g = (α/n) Fᵀ diag(w(1−w)(a−b)) X g.
    w = problem.gates().detach()
    expected = step / problem.n * problem.F.T @ (w * (1 - w) * (problem.a - problem.b) * (problem.X @ upper_grad))
    assert hyper.cg is None
    assert relative_error(hyper.grads[0], expected) < 1e-10


def test_hessian_vector_product_matches_finite_differences_of_gradients() -> None:
    torch.manual_seed(0)
    net = OutcomeNet(NetworkConfig(n_features=3, n_treatments=2, hidden=(8, 6))).double()
    x, y = torch.randn(32, 3), torch.randn(32, 4)
    params = list(net.parameters())

    def flat_gradient() -> torch.Tensor:
        loss = (net(x) - y).square().sum(dim=1).mean()
        return flatten(torch.autograd.grad(loss, params))

    gradient = lower_gradient((net(x) - y).square().sum(dim=1).mean(), params)
    vector = torch.randn_like(gradient)
    hvp = hessian_vector_product(gradient, params, vector)
    # The gradient graph is reused: a second product on the same graph gives the same answer.
    assert torch.allclose(hessian_vector_product(gradient, params, vector), hvp)
    eps = 1e-6
    base = flatten([p.detach().clone() for p in params])
    shifted = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, value in zip(params, unflatten(base + sign * eps * vector, params), strict=True):
                p.copy_(value)
        shifted.append(flat_gradient())
    finite_difference = (shifted[0] - shifted[1]) / (2 * eps)
    assert relative_error(hvp, finite_difference) < 1e-5


def test_conjugate_gradient_solves_damped_spd_system() -> None:
    g = torch.Generator().manual_seed(2)
    M = torch.randn(6, 6, generator=g)
    A = M @ M.T + 0.5 * torch.eye(6)
    rhs = torch.randn(6, generator=g)
    result = conjugate_gradient(lambda p: A @ p, rhs, max_iter=50, tol=1e-12, damping=0.3)
    expected = torch.linalg.solve(A + 0.3 * torch.eye(6), rhs)
    assert torch.allclose(result.solution, expected, rtol=1e-8, atol=1e-10)
    assert result.iterations <= 7 and not result.negative_curvature


def test_conjugate_gradient_stops_on_negative_curvature() -> None:
    H = torch.diag(torch.tensor([1.0, -2.0, 3.0]))
    # The first direction is the rhs itself: pᵀHp = −2 < 0 → stop at once with x = 0.
    first = conjugate_gradient(lambda p: H @ p, torch.tensor([0.0, 1.0, 0.0]), max_iter=50)
    assert first.negative_curvature and first.iterations == 1
    assert torch.equal(first.solution, torch.zeros(3))
    # Damping δ = 3 makes H + δI positive definite: no stop, exact solve.
    damped = conjugate_gradient(lambda p: H @ p, torch.tensor([0.0, 1.0, 0.0]), max_iter=50, tol=1e-12, damping=3.0)
    assert not damped.negative_curvature
    assert torch.allclose(damped.solution, torch.tensor([0.0, 1.0, 0.0]))
    # b = (1, 0.5, 0): p0ᵀHp0 = 0.5 > 0, step 2.5 → x = (2.5, 1.25, 0), r = (−1.5, 3, 0), β = 9,
    # p1 = (7.5, 7.5, 0) with p1ᵀHp1 = −56.25 → stop after the second product, keeping x.
    later = conjugate_gradient(lambda p: H @ p, torch.tensor([1.0, 0.5, 0.0]), max_iter=50)
    assert later.negative_curvature and later.iterations == 2
    assert torch.allclose(later.solution, torch.tensor([2.5, 1.25, 0.0]))
    assert later.residual == pytest.approx(11.25**0.5)


def test_conjugate_gradient_respects_iteration_budget_and_zero_rhs() -> None:
    A = torch.diag(torch.arange(1.0, 21.0))
    rhs = torch.ones(20)
    capped = conjugate_gradient(lambda p: A @ p, rhs, max_iter=3, tol=0.0)
    assert capped.iterations == 3 and capped.relative_residual > 0
    zero = conjugate_gradient(lambda p: A @ p, torch.zeros(20), max_iter=50)
    assert zero.iterations == 0 and torch.equal(zero.solution, torch.zeros(20))
    with pytest.raises(ValueError, match="damping"):
        conjugate_gradient(lambda p: A @ p, rhs, damping=-1.0)


def test_unflatten_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="entries"):
        unflatten(torch.zeros(5), [torch.zeros(2, 2)])


def test_implicit_hypergradient_matches_finite_differences_on_the_bidfcl_lower_loss() -> None:
    """The real Bi-DFCL lower and upper losses on tiny smooth OutcomeNets, θ solved to stationarity (float64).

    With θ′ = θ*(φ) and an exact CG solve, −Jᵀ H⁻¹ ∇_θ L_up must be dL_up(θ*(φ))/dφ, measured by central
    differences of φ with the lower problem re-solved by Newton's method for every shifted φ.
    """
    with Float64():
        problem = TinyBilevel(seed=0)
        exact = problem.finite_difference()
        implicit = problem.hypergradient(Setting(damping=0.0, cg_tol=1e-10, n_cg=500, k_steps=None))
        assert exact.norm() > 0
        assert relative_error(implicit, exact) <= 5e-2
        # The shipped approximation before issue 12 (δ = 0.1 at θ′ after 5 Adam steps) is measurably off.
        assert relative_error(problem.hypergradient(SHIPPED), exact) > 0.2
