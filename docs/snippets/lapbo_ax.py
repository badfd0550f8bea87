# LaplaceBNN as the surrogate of Ax's Client: Sobol trials, then BO with LaplaceBNN
# (keyword options go to LaplaceBNN).
import torch
from ax.api.client import Client
from ax.api.configs import RangeParameterConfig
from botorch.test_functions import Branin

from lapbo.ax import laplace_generation_strategy

branin = Branin()
client = Client(random_seed=0)
client.configure_experiment(parameters=[
    RangeParameterConfig(name="x0", bounds=(-5.0, 10.0), parameter_type="float"),
    RangeParameterConfig(name="x1", bounds=(0.0, 15.0), parameter_type="float"),
])
client.configure_optimization(objective="-branin")
client.set_generation_strategy(laplace_generation_strategy(
    n_sobol=5, sobol_seed=0, n_epochs=100, candidates=None, seed=0))

for _ in range(7):  # 5 Sobol trials, then 2 LaplaceBNN trials
    for index, params in client.get_next_trials(max_trials=1).items():
        x = torch.tensor([[params["x0"], params["x1"]]], dtype=torch.float64)
        client.complete_trial(index, raw_data={"branin": float(branin(x))})

best_parameters, _, best_index, _ = client.get_best_parameterization(
    use_model_predictions=False)
print(best_index, best_parameters)
