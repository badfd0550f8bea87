# Hyperparameters by the differentiable marginal likelihood: prior precision and noise
# by gradient steps, then `marglik_training` (network and hyperparameters together).
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace, marglik_training

torch.manual_seed(0)
X = torch.rand(50, 1, dtype=torch.float64) * 4 - 2
y = torch.sin(2 * X) + 0.1 * torch.randn_like(X)
loader = DataLoader(TensorDataset(X, y), batch_size=25)
model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()
opt = torch.optim.Adam(model.parameters(), lr=0.02)
for _ in range(300):
    opt.zero_grad()
    nn.functional.mse_loss(model(X), y).backward()
    opt.step()

la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="kron")
la.fit(loader)
log_prior = torch.zeros(1, dtype=torch.float64, requires_grad=True)
log_sigma = torch.zeros(1, dtype=torch.float64, requires_grad=True)
hyper_opt = torch.optim.Adam([log_prior, log_sigma], lr=0.1)
before = la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp()).item()
for _ in range(100):
    hyper_opt.zero_grad()
    neg_marglik = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
    neg_marglik.backward()
    hyper_opt.step()
after = la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp()).item()

# Online: alternate MAP steps and evidence steps from an untrained network.
net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()
la2, net, margliks, losses = marglik_training(
    net, loader, likelihood="regression", hessian_structure="diag", n_epochs=50,
    n_epochs_burnin=10, marglik_frequency=10, n_hypersteps=20, optimizer_kwargs={"lr": 0.02},
)
print(before, after, log_sigma.exp().item(), margliks[-1])
