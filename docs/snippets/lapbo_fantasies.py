# Exact conditioning of the linearized posterior (what fantasies and qKG use), a
# knowledge-gradient step, and Thompson sampling with differentiable sample paths.
import torch
from botorch.acquisition import qKnowledgeGradient
from botorch.optim import optimize_acqf

from lapbo import LaplaceBNN, draw_pathwise_samples

torch.manual_seed(0)
bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
X = torch.rand(10, 2, dtype=torch.float64)
Y = torch.sin(5 * X[:, :1]) + X[:, 1:].square()
model = LaplaceBNN(X, Y, n_epochs=200, candidates=None, seed=0).fit()

# One new observation: the conditioned model is an exact Bayesian update.
x_new = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
conditioned = model.condition_on_observations(x_new, torch.tensor([[0.3]], dtype=torch.float64))
var_before = model.posterior(x_new).variance.item()
var_after = conditioned.posterior(x_new).variance.item()

# Fantasies: a batch of conditioned models, one per fantasy outcome.
qkg = qKnowledgeGradient(model, num_fantasies=4)
kg_candidate, kg_value = optimize_acqf(qkg, bounds=bounds, q=1, num_restarts=2,
                                       raw_samples=16, options={"maxiter": 20})

# Thompson sampling: each path f_s(x) = f(x; θ*) + J(x)(θ_s − θ*) is a smooth function.
paths = draw_pathwise_samples(model, n_samples=1, generator=torch.Generator().manual_seed(0))
ts_candidate, ts_value = optimize_acqf(lambda x: paths(x).squeeze(-1).squeeze(-1).squeeze(0),
                                       bounds=bounds, q=1, num_restarts=2, raw_samples=32)
print(var_before, var_after, kg_candidate, ts_candidate)
