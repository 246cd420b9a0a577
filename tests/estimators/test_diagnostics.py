import numpy as np
import torch

from rllc.estimators.diagnostics import ess, mala_log_acceptance, rhat


def test_rhat_and_ess_on_mixed_and_stuck_chains():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 500))
    stuck = mixed + np.arange(4)[:, None]  # chains that disagree on the mean
    assert abs(rhat(mixed) - 1) < 0.02
    assert rhat(stuck) > 1.5
    assert ess(mixed) > 1000
    assert np.isnan(rhat(mixed[:, :3])) and np.isnan(ess(np.full((2, 10), np.nan)))


def test_mala_accepts_exact_langevin_moves_on_a_flat_potential():
    # U ≡ 0: the proposal is symmetric, so every move is accepted.
    w, w_new = torch.zeros(3, 5), torch.randn(3, 5)
    zero = torch.zeros(3)
    log_a = mala_log_acceptance(w, w_new, zero, zero, torch.zeros(3, 5), torch.zeros(3, 5), 0.1)
    assert torch.allclose(log_a, torch.zeros(3))


def test_mala_rejects_moves_uphill_a_steep_quadratic():
    # U(w) = ½·h·‖w‖² with h·ε far beyond the stability limit 2: acceptance collapses.
    h, eps = 1000.0, 0.1
    w = torch.ones(2, 4)
    w_new = w - 0.5 * eps * h * w  # the drift of an unstable step, no noise
    u, u_new = 0.5 * h * w.square().sum(-1), 0.5 * h * w_new.square().sum(-1)
    log_a = mala_log_acceptance(w, w_new, u, u_new, h * w, h * w_new, eps)
    assert (log_a < -100).all()
