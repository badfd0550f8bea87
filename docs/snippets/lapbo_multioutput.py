# Two outcomes in one network (one output each), scalarized or multi-objective
# acquisition functions on top.
import torch
from botorch.acquisition.multi_objective.logei import (
    qLogNoisyExpectedHypervolumeImprovement,
)
from botorch.optim import optimize_acqf

from lapbo import LaplaceBNN

torch.manual_seed(0)
bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
X = torch.rand(12, 2, dtype=torch.float64)
Y = torch.cat([torch.sin(5 * X[:, :1]) + X[:, 1:].square(),
               torch.cos(3 * X.sum(-1, keepdim=True))], dim=-1)  # (12, 2)
model = LaplaceBNN(X, Y, n_epochs=200, candidates=None, seed=0).fit()
posterior = model.posterior(X[:3])  # joint over 3 points × 2 outcomes
mean, covariance = posterior.mean, posterior.mvn.covariance_matrix  # (3, 2), (6, 6)

acqf = qLogNoisyExpectedHypervolumeImprovement(
    model, ref_point=[-1.5, -1.5], X_baseline=X, prune_baseline=True)
candidates, _ = optimize_acqf(acqf, bounds=bounds, q=2, num_restarts=2, raw_samples=16,
                              options={"maxiter": 20})  # (2, 2)
first = model.subset_output([0])  # a one-outcome view of the same posterior
print(mean.shape, covariance.shape, candidates, first.num_outputs)
