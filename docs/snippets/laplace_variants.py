# Every variant that `Laplace(...)` builds, on one small network: weights covered
# (`subset_of_weights`) × curvature structure (`hessian_structure`).
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils import LargestMagnitudeSubnetMask

torch.manual_seed(0)
X = torch.randn(40, 3, dtype=torch.float64)
y = X.sum(-1, keepdim=True).sin() + 0.05 * torch.randn(40, 1, dtype=torch.float64)
model = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 1)).double()
loader = DataLoader(TensorDataset(X, y), batch_size=20)
subnet = LargestMagnitudeSubnetMask(model, n_params_subnet=20).select()  # (20,) indices

variants = {
    ("all", "full"): {},
    ("all", "kron"): {},
    ("all", "diag"): {},
    ("all", "lowrank"): {"n_eigenvalues": 10},
    ("all", "gp"): {"n_subset": 40},                       # FunctionalLaplace
    ("last_layer", "full"): {},
    ("last_layer", "kron"): {},                            # the default
    ("last_layer", "diag"): {},
    ("subnetwork", "full"): {"subnetwork_indices": subnet},
    ("subnetwork", "diag"): {"subnetwork_indices": subnet},
}
evidence, classes = {}, {}
for (subset, structure), extra in variants.items():
    la = Laplace(model, "regression", subset_of_weights=subset,
                 hessian_structure=structure, **extra)
    la.fit(loader)
    evidence[subset, structure] = la.log_marginal_likelihood().item()
    classes[subset, structure] = type(la).__name__
    print(f"{subset:>10} {structure:>7} {type(la).__name__:>20} "
          f"n_params={la.n_params:4d} log evidence={evidence[subset, structure]:9.3f}")
