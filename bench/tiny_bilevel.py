"""A tiny Bi-DFCL problem whose exact hypergradient is known: the real losses on small smooth networks (float64).

Used by `tests/test_hypergradient.py` (the implicit hypergradient against finite differences) and by
`bench.hypergradient_accuracy` (how far each setting of the shipped algorithm is from it). The lower loss is
`training.bidfcl.lower_targets` + `lower_loss` (logged labels on the factual cells, gate-mixed teacher/target
pseudo-labels elsewhere), the upper loss `training.upper_losses.ppl_loss` at a fixed λ*, target and bridge are
`OutcomeNet`s with tanh in place of ReLU. Outcomes come from a planted network of the target's shape, so the lower
problem has a strict minimum and θ*(φ) is smooth: the implicit function theorem's assumptions hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import training.bidfcl as bidfcl
from training.batch import FactualBatch
from training.hypergradient import flatten, implicit_hypergradient, unflatten
from training.network import NetworkConfig, OutcomeNet
from training.upper_losses import ppl_loss


@dataclass(frozen=True)
class Setting:
    """One way of computing the hypergradient: damping δ, CG tolerance, CG iterations, lower steps on θ′."""

    damping: float
    cg_tol: float
    n_cg: int
    k_steps: int | None  # None: θ′ = θ*(φ) solved to stationarity (what the implicit formula assumes)

    def label(self) -> str:
        steps = "θ*" if self.k_steps is None else str(self.k_steps)
        return f"δ = {self.damping:g}, tol = {self.cg_tol:g}, n_cg = {self.n_cg}, steps = {steps}"


SHIPPED = Setting(damping=0.1, cg_tol=1e-3, n_cg=50, k_steps=5)  # the defaults before issue 12
# Most accurate at no extra cost per upper step (docs/bidfcl-analysis.md): at full size every CG run stops on
# negative curvature within ~8 products, so only the damping changes the hypergradient there.
CANDIDATE = Setting(damping=0.01, cg_tol=1e-6, n_cg=50, k_steps=5)


def smooth(net: OutcomeNet) -> OutcomeNet:
    """The same network with tanh in place of ReLU (infinitely differentiable)."""
    for index, layer in enumerate(net.body):
        if isinstance(layer, nn.ReLU):
            net.body[index] = nn.Tanh()
    return net


def tiny_net(hidden: int, seed: int) -> OutcomeNet:
    config = NetworkConfig(
        n_features=3, n_treatments=2, hidden=(hidden,), binary_revenue=False, binary_cost=False,
        feature_mean=[0.0] * 3, feature_std=[1.0] * 3, nonnegative_cost=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    return smooth(OutcomeNet(config)).double()


HIDDEN = 2


class TinyBilevel:
    """Bi-DFCL's lower and upper losses on tiny smooth networks, float64 (use inside `Float64()`).

    Outcomes come from a planted network of the target's shape (plus noise), so the lower problem has a strict,
    well-conditioned minimum near it: the implicit function theorem's assumptions hold and θ*(φ) is smooth.
    """

    def __init__(self, seed: int = 0, n_obs: int = 96, n_population: int = 960, n_rct: int = 400) -> None:
        g = torch.Generator().manual_seed(seed)
        k = self.k = 2
        planted = tiny_net(HIDDEN, 1000 + seed)
        self.target = tiny_net(HIDDEN, 1000 + seed)  # starts at the planted weights
        self.bridge = tiny_net(2, 2000 + seed)  # gates differ between rows and cells
        x = torch.randn(n_population, 3, generator=g, dtype=torch.float64)
        t = torch.randint(0, k, (n_population,), generator=g)
        with torch.no_grad():
            truth = planted(x)  # (N, 2K)
        rows = torch.arange(n_population)
        revenue = truth[rows, t] + 0.1 * torch.randn(n_population, generator=g)
        cost = truth[rows, k + t] + 0.1 * torch.randn(n_population, generator=g)
        teacher = truth + 0.2 * torch.randn(truth.shape, generator=g)  # unbiased but noisy
        observed = torch.cat([revenue[:, None].expand(-1, k), cost[:, None].expand(-1, k)], 1)
        self.population = bidfcl.LowerBatch(x, observed, bidfcl.factual_mask(t, k), teacher)
        self.batch = self.population.rows(torch.arange(n_obs))
        # θ: stationary on the whole population (as the running target is), so θ*(φ) of the batch is near it.
        self.params = list(self.target.parameters())
        with torch.no_grad():
            population_snapshot = self.target(x)
        self.solve(self.population, population_snapshot)
        self.theta = flatten([p.detach().clone() for p in self.params])
        with torch.no_grad():
            self.snapshot = self.target(self.batch.features)  # pseudo-labels' target term: θ at step start
        xr = torch.randn(n_rct, 3, generator=g, dtype=torch.float64)
        tr = torch.randint(0, k, (n_rct,), generator=g)
        with torch.no_grad():
            truth_r = planted(xr)
        rr = truth_r[torch.arange(n_rct), tr] + 0.1 * torch.randn(n_rct, generator=g)
        cr = truth_r[torch.arange(n_rct), k + tr]
        self.rct = FactualBatch(xr, tr, rr, cr, torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.lam = 0.5

    def set_theta(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, unflatten(theta, self.params), strict=True):
                p.copy_(value)

    def targets(self, batch: bidfcl.LowerBatch, snapshot: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.bridge.logits(batch.features))
        return bidfcl.lower_targets(batch, gates, snapshot)

    def lower(self, batch: bidfcl.LowerBatch | None = None, snapshot: torch.Tensor | None = None) -> torch.Tensor:
        batch = self.batch if batch is None else batch
        snapshot = self.snapshot if snapshot is None else snapshot
        return bidfcl.lower_loss(self.target(batch.features), self.targets(batch, snapshot))

    def upper(self) -> torch.Tensor:
        revenue, cost = self.target(self.rct.features).split(self.k, dim=1)
        return ppl_loss(revenue, cost, self.rct, self.lam, tau=1.0)

    def solve(self, batch: bidfcl.LowerBatch | None = None, snapshot: torch.Tensor | None = None) -> float:
        """θ ← a stationary point of L_low(φ, ·) from the current θ by Levenberg–Marquardt; returns ‖∇_θ L_low‖."""
        mu, norm = 1e-3, float("inf")
        for _ in range(200):
            loss = self.lower(batch, snapshot)
            grad = flatten(torch.autograd.grad(loss, self.params, create_graph=True))
            norm = float(grad.detach().norm())
            if norm < 1e-12:
                break
            rows = [flatten(torch.autograd.grad(g, self.params, retain_graph=True)) for g in grad]
            hessian = 0.5 * (torch.stack(rows) + torch.stack(rows).T).detach()
            theta = flatten([p.detach() for p in self.params])
            eye = torch.eye(theta.numel(), dtype=theta.dtype)
            while mu < 1e12:
                self.set_theta(theta - torch.linalg.solve(hessian + mu * eye, grad.detach()))
                with torch.no_grad():
                    if float(self.lower(batch, snapshot)) <= float(loss):
                        mu = max(mu / 10, 1e-12)
                        break
                mu *= 10
            else:
                self.set_theta(theta)
                break
        return norm

    def upper_at_solution(self, start: torch.Tensor | None = None) -> float:
        """L_up(θ*(φ)) for the current bridge, θ* solved from `start` (default θ)."""
        self.set_theta(self.theta if start is None else start)
        norm = self.solve()
        if norm > 1e-8:
            raise RuntimeError(f"the lower problem did not reach stationarity: ‖∇θ L_low‖ = {norm:.2e}")
        with torch.no_grad():
            return float(self.upper())

    def finite_difference(self, eps: float = 1e-5) -> torch.Tensor:
        """Central differences of φ ↦ L_up(θ*(φ)), one per bridge parameter: the exact hypergradient."""
        bridge = list(self.bridge.parameters())
        phi = flatten([p.detach().clone() for p in bridge])
        grads = torch.zeros_like(phi)
        self.upper_at_solution()
        solution = flatten([p.detach().clone() for p in self.params])  # θ*(φ): a close start for shifted φ
        for i in range(phi.numel()):
            values = []
            for sign in (1.0, -1.0):
                shifted = phi.clone()
                shifted[i] += sign * eps
                self._set_bridge(shifted)
                values.append(self.upper_at_solution(solution))
            grads[i] = (values[0] - values[1]) / (2 * eps)
        self._set_bridge(phi)
        return grads

    def _set_bridge(self, phi: torch.Tensor) -> None:
        bridge = list(self.bridge.parameters())
        with torch.no_grad():
            for p, value in zip(bridge, unflatten(phi, bridge), strict=True):
                p.copy_(value)

    def hypergradient(self, setting: Setting, lr: float = 1e-3) -> torch.Tensor:
        """The implicit hypergradient as Alg. 1 computes it under `setting` (θ′ from θ, or θ* itself)."""
        self.set_theta(self.theta)
        if setting.k_steps is None:
            self.solve()
        else:
            with torch.no_grad():
                fixed = self.targets(self.batch, self.snapshot)
            optimiser = torch.optim.Adam(self.params, lr=lr)
            for _ in range(setting.k_steps):
                optimiser.zero_grad(set_to_none=True)
                bidfcl.lower_loss(self.target(self.batch.features), fixed).backward()
                optimiser.step()
        upper_grad = flatten(torch.autograd.grad(self.upper(), self.params))
        result = implicit_hypergradient(
            self.lower(), self.params, list(self.bridge.parameters()), upper_grad,
            max_iter=setting.n_cg, tol=setting.cg_tol, damping=setting.damping,
        )  # fmt: skip
        return flatten(result.grads).detach()


class Float64:
    """Context: default dtype float64 (tiny problem), restored on exit."""

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.previous)


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((estimate - exact).norm() / exact.norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
