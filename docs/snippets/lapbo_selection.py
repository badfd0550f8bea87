# Model selection by the Laplace evidence: each candidate is trained, its prior
# precision and noise refit; the model becomes the one of highest evidence.
import torch

from lapbo import LaplaceBNN
from lapbo.selection import selection_table

torch.manual_seed(0)
X = torch.rand(15, 2, dtype=torch.float64)
Y = torch.sin(5 * X[:, :1]) + X[:, 1:].square()
model = LaplaceBNN(X, Y, n_epochs=200, seed=0,
                   candidates=[{}, {"trend_scale": 5.0}, {"width": 20}]).fit()
for score in model.selection:  # lapbo.selection.CandidateScore, one per candidate
    print(score.options, round(score.log_marginal_likelihood, 2), score.chosen)
print(selection_table(model.selection))
