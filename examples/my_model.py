"""A user-written model for recfast configs: EASE (Steck 2019) in a few lines of torch.

Load it from a config with ``custom_modules: [my_model.py]`` (relative to the config file) and
select it with ``model: {name: MyEASE, params: {l2: 200.0}}``; see config_custom_model.yaml.
"""

import torch

import recfast
from recfast.models import Recommender


@recfast.register_model("MyEASE")
class MyEASE(Recommender):
    """Item-item linear autoencoder with a closed form: B = I - P / diag(P), P = (X^T X + l2 I)^-1."""

    iterative = False  # fitted in closed form by fit(); the Trainer just calls it and evaluates

    def __init__(self, n_users: int, n_items: int, *, l2: float = 200.0) -> None:
        super().__init__(n_users, n_items, l2=l2)
        self.l2 = float(l2)
        self.register_buffer("B", torch.zeros(n_items, n_items))

    def fit(self, train: recfast.CSR) -> "MyEASE":
        self.prepare(train)
        x = torch.from_numpy(train.to_scipy().toarray()).double()
        gram = x.T @ x + self.l2 * torch.eye(self.n_items, dtype=torch.float64)
        p = torch.linalg.inv(gram)
        b = -p / torch.diagonal(p)
        b.fill_diagonal_(0.0)
        self.B.copy_(b.float())
        return self

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.train_csr.to_scipy()[users.cpu().numpy()].toarray()
        return torch.from_numpy(rows).to(self.B) @ self.B
