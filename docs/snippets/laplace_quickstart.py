# A trained regression network, its Laplace posterior over all weights, tuned prior
# precision and noise, and the GLM predictive (mean and variance per test point).
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

torch.manual_seed(0)
X = torch.linspace(-2, 2, 64, dtype=torch.float64).unsqueeze(-1)
y = torch.sin(2 * X) + 0.1 * torch.randn_like(X)
model = nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 1)).double()
opt = torch.optim.Adam(model.parameters(), lr=0.02)
for _ in range(300):  # MAP training
    opt.zero_grad()
    nn.functional.mse_loss(model(X), y).backward()
    opt.step()
train_loader = DataLoader(TensorDataset(X, y), batch_size=32)

la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full",
             sigma_noise=0.1)
la.fit(train_loader)
la.optimize_prior_precision(method="marglik")  # scalar prior precision by the evidence

X_test = torch.linspace(-3, 3, 7, dtype=torch.float64).unsqueeze(-1)
f_mean, f_var = la(X_test, pred_type="glm")  # shapes (7, 1) and (7, 1, 1)
pred_std = (f_var.squeeze(-1) + la.sigma_noise**2).sqrt()  # with observation noise
print(la.log_marginal_likelihood().item(), pred_std.squeeze(-1))
