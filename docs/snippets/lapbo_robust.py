# Robust BO: optimise the 80 % CVaR of f(x + w) over input noise w, as BoTorch's robust
# BO does with a GP. InputPerturbation leaves the observed inputs as they are and turns
# every query point into its n_w perturbed copies; the risk measure reduces them.
import torch
from botorch.acquisition import qSimpleRegret
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.risk_measures import CVaR
from botorch.models.transforms.input import InputPerturbation
from botorch.optim import optimize_acqf
from botorch.utils.sampling import draw_sobol_normal_samples

from lapbo import LaplaceBNN

torch.manual_seed(0)
bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
X = torch.rand(15, 2, dtype=torch.float64)
Y = torch.sin(6 * X[:, :1]) + X[:, 1:].square()
n_w = 16
perturbations = 0.05 * draw_sobol_normal_samples(d=2, n=n_w, seed=0).to(X)
model = LaplaceBNN(X, Y, input_transform=InputPerturbation(perturbations, bounds=bounds),
                   seed=0).fit()
posterior = model.posterior(X[:3])  # 3 points → 3 · 16 perturbed copies, jointly
cvar = CVaR(alpha=0.8, n_w=n_w)
# qLogNoisyExpectedImprovement splits the perturbed rows of its baseline only on its
# cached-root path, which BoTorch takes for GPyTorch models; use best_f instead
best_f = float(cvar(model.posterior(X).mean).max())
acqf = qLogExpectedImprovement(model, best_f=best_f, objective=cvar)
candidate, value = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=2, raw_samples=64)
robust_choice, _ = optimize_acqf(qSimpleRegret(model, objective=cvar), bounds=bounds, q=1,
                                 num_restarts=2, raw_samples=64)
