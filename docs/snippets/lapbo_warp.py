# Input warping: BoTorch's Warp (a Kumaraswamy CDF per input) with its concentrations
# learned by the evidence of the random-feature networks, as a GP learns them by its
# marginal likelihood. Give the search space's bounds, so that queries are not clamped
# to the range of the data, and priors (BoTorch's tutorial's), which keep the
# concentrations moderate where few points would allow a near-step.
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.models.transforms.input import Warp
from botorch.optim import optimize_acqf
from gpytorch.priors import LogNormalPrior

from lapbo import LaplaceBNN

torch.manual_seed(0)
bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
X = torch.rand(20, 2, dtype=torch.float64)
Y = torch.exp(-10 * (1 - X[:, :1])) + torch.sin(3 * X[:, 1:])  # steep near x₁ = 1
warp = Warp(d=2, indices=[0, 1], bounds=bounds,
            concentration0_prior=LogNormalPrior(0.0, 0.75**0.5),
            concentration1_prior=LogNormalPrior(0.0, 0.75**0.5))
model = LaplaceBNN(X, Y, input_transform=warp, seed=0).fit()
print(warp.concentration0.data, warp.concentration1.data)  # fitted; 1 is no warping
acqf = qLogNoisyExpectedImprovement(model, X_baseline=X)
candidate, value = optimize_acqf(acqf, bounds=bounds, q=2, num_restarts=2, raw_samples=64)
# next round: the warp starts from these concentrations
# LaplaceBNN(X_new, Y_new, input_transform=Warp(..., bounds=bounds), warm_start=model)
