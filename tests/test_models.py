"""The core models learn (a ranking metric clearly above Popularity), rank without seen items,
save/load exactly, and user-written models plug in through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recfast
from recfast.models import BPRMF, EASE, ItemKNN, LightGCN, Popularity, Recommender


def _split(seed: int = 0, n_users: int = 300, n_items: int = 200, n: int = 9000):
    x = recfast.data.synthetic(n_users, n_items, n, seed=seed, popularity_exponent=0.6, min_user_interactions=5)
    rng = np.random.default_rng(seed)
    test_mask = rng.random(len(x)) < 0.2
    tr = recfast.CSR.from_coo(x.users[~test_mask], x.items[~test_mask], shape=(n_users, n_items))
    te = recfast.CSR.from_coo(x.users[test_mask], x.items[test_mask], shape=(n_users, n_items))
    return tr, te


def _recall_at(model: Recommender, train: recfast.CSR, test: recfast.CSR, k: int = 20) -> float:
    """Plain numpy Recall@k over users with test items (the reference for the evaluator too)."""
    users = torch.nonzero(test.row_lengths() > 0).squeeze(1)
    items, _ = model.recommend(users, k=k)
    tr = train.to_scipy().tolil()
    te = test.to_scipy().tolil()
    rec = []
    for row, u in zip(items.tolist(), users.tolist()):
        assert not set(row) & set(tr.rows[u]), "recommend returned a training item"
        truth = set(te.rows[u])
        rec.append(len(truth & set(row)) / len(truth))
    return float(np.mean(rec))


@pytest.fixture(scope="module")
def split():
    return _split()


@pytest.fixture(scope="module")
def pop_recall(split):
    train, test = split
    return _recall_at(Popularity(*train.shape).fit(train), train, test)


def test_popularity_ranks_by_count(split) -> None:
    train, _ = split
    model = Popularity(*train.shape).fit(train)
    counts = np.bincount(train.indices.numpy(), minlength=train.n_cols)
    items, scores = model.recommend(torch.tensor([0]), k=5, exclude_seen=False)
    assert scores[0].tolist() == sorted(counts, reverse=True)[:5]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ease_matches_closed_form_and_learns(split, pop_recall, dtype) -> None:
    train, test = split
    model = EASE(*train.shape, l2=50.0, dtype=dtype).fit(train)
    x = train.to_scipy().toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 50.0 * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights.numpy(), b, atol=2e-4)
    assert _recall_at(model, train, test) > pop_recall + 0.02


def test_itemknn_learns_and_keeps_k_neighbours(split, pop_recall) -> None:
    train, test = split
    model = ItemKNN(*train.shape, k=30, shrink=5.0).fit(train)
    assert int(model.similarity.row_lengths().max()) <= 30
    diag = model.similarity.to_scipy().diagonal()
    assert np.all(diag == 0)
    assert _recall_at(model, train, test) > pop_recall


def test_bprmf_fused_fast_path_learns(split, pop_recall) -> None:
    train, test = split
    model = BPRMF(*train.shape, dim=16, seed=0, item_bias=True, l2=0.05)
    hist = model.fit_sgd(train, epochs=30, lr=0.05, batch_size=1024, seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert _recall_at(model, train, test) > pop_recall + 0.02


def test_bprmf_trained_through_loss_learns(split, pop_recall) -> None:
    train, test = split
    model = BPRMF(*train.shape, dim=16, seed=0, item_bias=True, l2=0.05)
    model.prepare(train)
    opt = recfast.optim.SparseAdam(model.sparse_parameters(), lr=0.02)
    loader = model.make_loader(train, 512, seed=0)
    losses = []
    for epoch in range(15):
        loader.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert _recall_at(model, train, test) > pop_recall + 0.02


def test_lightgcn_learns(split, pop_recall) -> None:
    train, test = split
    model = LightGCN(*train.shape, dim=32, num_layers=2, l2=1e-4, seed=0)
    model.prepare(train)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = model.make_loader(train, 1024, seed=0)
    for epoch in range(25):
        loader.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
    assert _recall_at(model, train, test) > pop_recall + 0.02


def test_lightgcn_embedding_cache_follows_weights(split) -> None:
    train, _ = split
    model = LightGCN(*train.shape, dim=8, num_layers=1)
    model.prepare(train)
    u1 = model.embeddings()[0].clone()
    with torch.no_grad():
        model.embedding.add_(1.0)
    assert not torch.equal(model.embeddings()[0], u1)


@pytest.mark.parametrize("name,params", [
    ("Popularity", {}), ("EASE", {"l2": 10.0}), ("ItemKNN", {"k": 10}),
    ("BPRMF", {"dim": 8, "item_bias": True}), ("LightGCN", {"dim": 8, "num_layers": 2}),
])
def test_save_load_round_trip(split, tmp_path, name, params) -> None:
    train, _ = split
    model = recfast.build_model(name, params, n_users=train.n_rows, n_items=train.n_cols)
    if model.iterative:
        model.prepare(train)
    else:
        model.fit(train)
    users = torch.arange(10)
    before = model.recommend(users, k=7)
    model.save(tmp_path / "m.pt")
    loaded = Recommender.load(tmp_path / "m.pt")
    assert type(loaded) is type(model)
    after = loaded.recommend(users, k=7)
    assert torch.equal(before[0], after[0]) and torch.allclose(before[1], after[1])


def test_build_model_rejects_unknown_params() -> None:
    with pytest.raises(TypeError, match="unknown parameter"):
        recfast.build_model("BPRMF", {"dimension": 8}, n_users=3, n_items=3)
    with pytest.raises(KeyError, match="no model named"):
        recfast.get_model("NoSuchModel")


def test_similar_items_excludes_the_item_itself(split) -> None:
    train, _ = split
    model = BPRMF(*train.shape, dim=8)
    items, scores = model.similar_items(torch.tensor([0, 5]), k=4)
    assert items.shape == (2, 4)
    assert 0 not in items[0].tolist() and 5 not in items[1].tolist()
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


# -- user-written models, in the shape of WarpRec's guide ----------------------------------------

def test_custom_ease_plugs_in_through_the_registry(split, pop_recall) -> None:
    @recfast.register_model("TestMyEASE")
    class MyEASE(Recommender):
        iterative = False

        def __init__(self, n_users, n_items, *, l2=100.0):
            super().__init__(n_users, n_items, l2=l2)
            self.l2 = l2
            self.register_buffer("b", torch.zeros(n_items, n_items))

        def fit(self, train):
            self.prepare(train)
            x = torch.from_numpy(train.to_scipy().toarray())
            g = x.T @ x + self.l2 * torch.eye(self.n_items)
            p = torch.linalg.inv(g)
            self.b = -p / torch.diagonal(p)
            self.b.fill_diagonal_(0.0)
            return self

        def score_users(self, users):
            return self.train_csr.dense_rows(users) @ self.b

    train, test = split
    model = recfast.build_model("TestMyEASE", {"l2": 50.0}, n_users=train.n_rows, n_items=train.n_cols).fit(train)
    assert _recall_at(model, train, test) > pop_recall + 0.02


def test_custom_bpr_plugs_in_through_the_registry(split, pop_recall) -> None:
    @recfast.register_model("TestMyBPR")
    class MyBPR(Recommender):
        def __init__(self, n_users, n_items, *, dim=16):
            super().__init__(n_users, n_items, dim=dim)
            self.u = torch.nn.Embedding(n_users, dim)
            self.i = torch.nn.Embedding(n_items, dim)
            torch.nn.init.normal_(self.u.weight, std=0.1)
            torch.nn.init.normal_(self.i.weight, std=0.1)

        def loss(self, batch):
            users, pos, neg = batch
            return recfast.ops.bpr_loss(self.u.weight, self.i.weight, users, pos, neg, l2=0.05)

        def embeddings(self):
            return self.u.weight.detach(), self.i.weight.detach(), None

    train, test = split
    model = recfast.build_model("TestMyBPR", {"dim": 16}, n_users=train.n_rows, n_items=train.n_cols)
    model.prepare(train)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = model.make_loader(train, 512, seed=0)
    for epoch in range(15):
        loader.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad()
            model.loss(batch).backward()
            opt.step()
    assert _recall_at(model, train, test) > pop_recall + 0.02
