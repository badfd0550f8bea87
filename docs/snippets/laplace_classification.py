# Classification: last-layer KFAC Laplace (the default variant), prior precision by
# validation NLL (`gridsearch`), and the three ways to squash the GLM predictive.
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

torch.manual_seed(0)
X = torch.randn(120, 2, dtype=torch.float64)
y = (X[:, 0] * X[:, 1] > 0).long() + (X[:, 0] > 1).long()  # 3 classes
model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).double()
opt = torch.optim.Adam(model.parameters(), lr=0.05)
for _ in range(200):
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step()
train_loader = DataLoader(TensorDataset(X[:90], y[:90]), batch_size=30)
val_loader = DataLoader(TensorDataset(X[90:], y[90:]), batch_size=30)

la = Laplace(model, "classification")  # subset_of_weights="last_layer", "kron"
la.fit(train_loader)
la.optimize_prior_precision(method="gridsearch", pred_type="glm", link_approx="probit",
                            grid_size=10,
                            val_loader=val_loader)
probs = {link: la(X[90:], pred_type="glm", link_approx=link)
         for link in ("probit", "bridge", "mc")}           # each (30, 3), rows sum to 1
nn_probs = la(X[90:], pred_type="nn", link_approx="mc", n_samples=50)  # sampled weights
print(la.prior_precision, {k: v[0] for k, v in probs.items()})
