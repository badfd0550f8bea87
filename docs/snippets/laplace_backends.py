# Curvature backends: the native torch.func GGN (default) and the adapters for
# Curvlinops, BackPACK and ASDL compute the same exact GGN of a small network.
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.curvature import AsdlGGN, BackPackGGN, CurvlinopsGGN, TorchFuncGGN

torch.manual_seed(0)
X = torch.randn(30, 2, dtype=torch.float64)
y = torch.randn(30, 1, dtype=torch.float64)
model = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).double()
loader = DataLoader(TensorDataset(X, y), batch_size=10)

H = {}
for backend in (TorchFuncGGN, CurvlinopsGGN, BackPackGGN, AsdlGGN):
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full",
                 backend=backend)
    la.fit(loader)
    H[backend.__name__] = la.H  # (P, P) GGN summed over the data
print({name: float((h - H["TorchFuncGGN"]).abs().max()) for name, h in H.items()})
