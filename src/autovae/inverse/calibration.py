"""Simulation-based calibration (Talts et al. 2018) of a prior and a kernel.

Truths theta*_i (drawn from the data distribution, or from a prior), data y_i = F(theta*_i) +
sigma eps, and for each the posterior under the prior being checked. If that prior is the
distribution the truths come from and the sampler is right, the rank of each theta*_ij among
L posterior draws is uniform on 0..L; an overconfident posterior piles ranks at both ends (a U),
a biased one at one end. All truths are sampled at once: the chains of every truth form one
batch (truths x chains rows), each row with its own data, through the ordinary runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from .chains import run_chains
from .forward import ForwardModel
from .kernels import Target
from .priors import Prior

__all__ = ["SBCResult", "sbc"]


@dataclass
class SBCResult:
    """``ranks`` (truths, quantities) in 0..L; ``draws`` L per truth; ``p_values`` per
    quantity (chi-square of the rank histogram against uniform, ``bins`` bins); ``p_value``
    the smallest times the number of quantities (Bonferroni, capped at 1);
    ``coverage_90`` / ``coverage_2sd``: the fraction of truths inside the central 90% band /
    within 2 posterior sd, over quantities; ``sd`` (truths, quantities) posterior sds."""

    ranks: np.ndarray
    draws: int
    bins: int
    p_values: np.ndarray
    p_value: float
    coverage_90: float
    coverage_2sd: float
    sd: np.ndarray
    rhat_max: float

    def histogram(self) -> np.ndarray:
        """Counts of the ranks pooled over quantities in ``bins`` equal bins."""
        return np.histogram(self.ranks, bins=self.bins, range=(0, self.draws + 1))[0]

    @property
    def p_value_pooled(self) -> float:
        """Chi-square p-value of the pooled histogram: more power than per quantity, but the
        quantities of one truth are correlated, so it overstates the evidence somewhat."""
        return float(stats.chisquare(self.histogram()).pvalue)


def sbc(prior: Prior, forward: ForwardModel, truths, sigma: float, folder: str | Path,
        quantities=None, kernel="pcn", chains: int = 2, warmup: int = 500, draws: int = 200,
        thin: int = 5, seed: int = 0, bins: int = 10) -> SBCResult:
    """Rank the ``truths`` (T, *param_shape) among posterior draws under ``prior``.

    ``quantities``: indices into the flattened parameters to rank (default all);
    ``sigma``: the noise std of the simulated data (noise from ``seed``). The chains
    (T x ``chains`` rows) live in ``folder`` and resume like any chain run.
    """
    truths = torch.as_tensor(truths, dtype=torch.float64)
    n_truths = truths.shape[0]
    size = int(np.prod(prior.param_shape))
    flat = truths.reshape(n_truths, size)
    q = np.arange(size) if quantities is None else np.asarray(quantities)
    if n_truths < 2 or flat.shape[1] != size:
        raise ValueError(f"truths must be (T >= 2, {size}) parameters, got {tuple(truths.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = forward(truths.reshape(n_truths, *forward.param_shape))
    y = y + sigma * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    rows = y.repeat_interleave(chains, 0)  # row r: truth r // chains

    def residuals(z):
        if z.shape[0] != rows.shape[0]:  # NUTS steps one row at a time: rows unknown
            raise ValueError("sbc runs every truth's chains as one batch: use pcn, rwm or mala")
        pred = forward(prior.params(z).reshape(z.shape[0], *forward.param_shape))
        return (pred - rows) / sigma

    def phi(z):
        return 0.5 * (residuals(z) ** 2).sum(-1)

    target = Target(phi, prior.dim, "normal" if prior.normal else prior.log_prior,
                    solves=lambda: forward.solves, gradient=forward.gradient,
                    gradient_reason=forward.gradient_reason, residuals=residuals)
    result = run_chains(target, kernel, folder, chains=n_truths * chains, warmup=warmup,
                        draws=draws, seed=seed, thin=thin, checkpoint_every=500)
    z = torch.from_numpy(result.draws)  # (T * chains, draws, d)
    with torch.no_grad():
        p = torch.cat([prior.params(z[i]).reshape(draws, size)[:, q][None]
                       for i in range(z.shape[0])])  # (T * chains, draws, Q)
    p = p.reshape(n_truths, chains * draws, len(q))
    t = flat[:, q][:, None, :]
    ranks = (p < t).sum(1).numpy()
    total = chains * draws
    expected = n_truths / bins
    p_values = np.array([stats.chisquare(np.histogram(ranks[:, j], bins=bins,
                                                      range=(0, total + 1))[0],
                                         np.full(bins, expected)).pvalue
                         for j in range(len(q))])
    lo, hi = torch.quantile(p, 0.05, dim=1), torch.quantile(p, 0.95, dim=1)
    mean, sd = p.mean(1), p.std(1)
    t = t[:, 0, :]
    per_chain = result.draws.reshape(n_truths, chains, draws, -1)
    from .diagnostics import rhat

    rh = max(float(np.nanmax(rhat(per_chain[i]))) for i in range(n_truths)) if chains > 1 \
        else float("nan")
    return SBCResult(ranks=ranks, draws=total, bins=bins, p_values=p_values,
                     p_value=float(min(1.0, p_values.min() * len(q))),
                     coverage_90=float(((lo <= t) & (t <= hi)).double().mean()),
                     coverage_2sd=float(((mean - t).abs() <= 2 * sd).double().mean()),
                     sd=sd.numpy(), rhat_max=rh)
