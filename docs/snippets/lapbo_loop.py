# A BoTorch loop with LaplaceBNN: fit, qLogEI, optimize_acqf, evaluate, warm-start the
# next round's model from the last one.
import torch
from botorch.acquisition import qLogExpectedImprovement
from botorch.models.transforms import Normalize
from botorch.optim import optimize_acqf
from botorch.test_functions import Branin

from lapbo import LaplaceBNN

torch.manual_seed(0)
f = Branin(negate=True)
X = f.bounds[0] + (f.bounds[1] - f.bounds[0]) * torch.rand(6, 2, dtype=torch.float64)
Y = f(X).unsqueeze(-1)  # (n, 1)
options = {"n_epochs": 200, "n_epochs_warm_start": 50, "candidates": None, "seed": 0}

model = None
for _ in range(3):
    model = LaplaceBNN(X, Y, input_transform=Normalize(d=2, bounds=f.bounds),
                       warm_start=model, **options).fit()
    acqf = qLogExpectedImprovement(model, best_f=Y.max())
    candidate, _ = optimize_acqf(acqf, bounds=f.bounds, q=1, num_restarts=2,
                                 raw_samples=32)  # (1, 2)
    X, Y = torch.cat([X, candidate]), torch.cat([Y, f(candidate).unsqueeze(-1)])

posterior = model.posterior(candidate)  # BoTorch GPyTorchPosterior
print(Y.max().item(), posterior.mean.item(), posterior.variance.item())
