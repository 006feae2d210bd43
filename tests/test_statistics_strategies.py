"""SimpleCIL, RanPAC and RAPF on constructed features whose answers are worked out here, plus one
run of all three through the runner (tiny random CLIP, digits)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import SupervisedPlugin

from lamm_cl import runner, config
from lamm_cl.benchmark import Plan, make_streams
from lamm_cl.errors import ConfigError
from lamm_cl.registry import get_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategies import ranpac, rapf, simplecil


# --------------------------------------------------------------------------- constructed benchmarks


def toy_scenario(train_x, train_y, experiences, test_x=None, test_y=None):
    """An Avalanche scenario over given feature rows: ``experiences`` lists the labels of each one."""
    train_x, train_y = torch.as_tensor(train_x, dtype=torch.float32), np.asarray(train_y)
    test_x = train_x if test_x is None else torch.as_tensor(test_x, dtype=torch.float32)
    test_y = train_y if test_y is None else np.asarray(test_y)
    n = int(max(c for e in experiences for c in e)) + 1
    plan = Plan(dataset="toy", class_order=list(range(n)), class_names=[f"class {c}" for c in range(n)],
                experiences=[list(e) for e in experiences],
                train_index=[np.flatnonzero(np.isin(train_y, e)) for e in experiences],
                test_index=[np.flatnonzero(np.isin(test_y, e)) for e in experiences],
                template="a photo of a {}.", order_name="identity")

    def reader(x):
        return lambda t, idx: (lambda i, idx=idx: x[idx[i]])

    return plan, make_streams(plan, reader(train_x), reader(test_x), train_y, test_y)


def toy_context(plan, dim, text=None, logit_scale=10.0, plugins=()):
    """A StrategyContext with a stand-in CLIP: only the width, the logit scale and fixed text features."""
    def encode_text(texts):
        assert len(texts) == len(plan.class_names)
        return torch.as_tensor(text, dtype=torch.float32)

    clip = SimpleNamespace(embed_dim=dim, logit_scale=logit_scale, encode_text=encode_text)
    return StrategyContext(clip=clip, class_names=plan.class_names, template=plan.template,
                           device=torch.device("cpu"), seed=0, plugins=list(plugins))


def build(name, ctx, **opts):
    spec = get_strategy(name)
    o = spec.options(**opts)
    o.validate("strategies[0]")
    return spec.build(ctx, o)


# --------------------------------------------------------------------------- SimpleCIL


# class 0: (1,0,1), (3,0,-1) -> mean (2,0,0); class 1: (0,2,1), (0,4,-1) -> mean (0,3,0);
# class 2: (0,0,5) alone; class 3: (-1,-1,0), (-3,-3,0) -> mean (-2,-2,0)
SC_X = [[1, 0, 1], [3, 0, -1], [0, 2, 1], [0, 4, -1], [0, 0, 5], [-1, -1, 0], [-3, -3, 0]]
SC_Y = [0, 0, 1, 1, 2, 3, 3]


def test_simplecil_prototypes_are_raw_class_means_and_the_nearest_wins():
    torch.manual_seed(0)
    plan, scenario = toy_scenario(SC_X, SC_Y, [[0, 1], [2, 3]])
    tpl = build("simplecil", toy_context(plan, 3), batch_size=3)
    tpl.train(scenario.train_stream[0])
    model = tpl.model
    # the mean of the raw features, not of normalised ones (whose mean would point at (0.83, 0, 0.20))
    assert torch.allclose(model.prototypes[:2], torch.tensor([[2.0, 0, 0], [0, 3.0, 0]]))
    model.eval()
    x = torch.tensor([[1.0, 0.9, 0.0], [0.5, 2.0, 0.0]])
    out = model(x)
    assert out.shape == (2, 2)  # one column per seen class
    # cosines by hand: (1, .9, 0) has norm sqrt(1.81); (.5, 2, 0) has norm sqrt(4.25)
    expected = torch.tensor([[1 / math.sqrt(1.81), 0.9 / math.sqrt(1.81)],
                             [0.5 / math.sqrt(4.25), 2 / math.sqrt(4.25)]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.argmax(1).tolist() == [0, 1]

    before = model.prototypes[:2].clone()
    tpl.train(scenario.train_stream[1])
    assert torch.equal(model.prototypes[:2], before)  # a later experience leaves earlier prototypes alone
    assert torch.allclose(model.prototypes[2:4], torch.tensor([[0, 0, 5.0], [-2.0, -2.0, 0]]))
    model.eval()
    out = model(torch.tensor([[-1.0, -0.8, 0.1], [0.1, 0.0, 1.0]]))
    assert out.shape == (2, 4)
    assert out.argmax(1).tolist() == [3, 2]


def test_simplecil_needs_a_pass():
    with pytest.raises(ConfigError, match=r"strategies\[0\]\.epochs"):
        simplecil.SimpleCILOptions(epochs=0).validate("strategies[0]")


# --------------------------------------------------------------------------- RanPAC


def brute_force_ridge(h, y, ridges=tuple(10.0 ** k for k in range(-8, 9))):
    """RanPAC's λ search written out: a linear solve per λ on the first 80%, MSE on the rest (numpy, float64)."""
    h, y = np.asarray(h, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = int(len(h) * 0.8)
    losses = []
    for lam in ridges:
        w = np.linalg.solve(h[:n].T @ h[:n] + lam * np.eye(h.shape[1]), h[:n].T @ y[:n])
        losses.append(np.mean((h[n:] @ w - y[n:]) ** 2))
    return ridges[int(np.argmin(losses))], losses


@pytest.mark.parametrize("n, m", [(30, 50), (60, 8)])  # fewer samples than M (dual form) and more (primal)
def test_ridge_search_matches_seventeen_solves(n, m):
    gen = torch.Generator().manual_seed(n)
    h = torch.randn(n, m, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    y = F.one_hot(labels, 5).float()
    h = h + 2.0 * y[:, :3] @ torch.randn(3, m, generator=gen)  # some signal, so λ matters
    lam, losses = brute_force_ridge(h.numpy(), y.numpy())
    got = ranpac.ridge_validation_losses(h[: int(n * 0.8)], y[: int(n * 0.8)], h[int(n * 0.8):], y[int(n * 0.8):],
                                         ranpac.RIDGES)
    # rtol: at λ = 1e-8 the explicit solve of a rank-deficient system is conditioned ~1e11
    assert np.allclose(got.numpy(), losses, rtol=1e-4, atol=1e-9)
    assert ranpac.select_ridge(h, y) == lam


def test_ranpac_ridge_solution_is_the_closed_form():
    dim, M = 3, 12
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, dim, generator=gen)
    y = torch.arange(40) % 4
    x = x + torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [-3.0, -3.0, 0]])[y]
    model = ranpac.RandomProjectionRidge(n_classes=6, dim=dim, M=M, seed=7)
    # the projection is a standard normal [dim, M] draw from the given seed
    assert torch.equal(model.projection, torch.randn(dim, M, generator=torch.Generator().manual_seed(7)))
    W = model.projection.double().numpy()
    first, second = (y < 2), (y >= 2)  # experience 1: classes 0, 1; experience 2: classes 2, 3
    for part in (first, second):
        for chunk in torch.arange(40)[part].split(7):  # batches in arrival order
            model.update(x[chunk], y[chunk])
        model.finish_experience()

    X, Y = x.double().numpy(), np.eye(6)[y.numpy()]
    H = np.maximum(X @ W, 0)
    G, Q = H.T @ H, H.T @ Y
    assert np.allclose(model.G.numpy(), G, rtol=1e-5)
    assert np.allclose(model.Q.numpy(), Q, rtol=1e-5)
    lam1, _ = brute_force_ridge(H[first.numpy()], Y[first.numpy()])
    lam2, _ = brute_force_ridge(H[second.numpy()], Y[second.numpy()])
    assert model.ridges == [lam1, lam2]  # λ chosen on each experience's own data
    Wo = np.linalg.solve(G + lam2 * np.eye(M), Q)  # the ridge solution over everything seen
    assert np.allclose(model.W.numpy(), Wo, rtol=1e-4, atol=1e-6)
    model.eval()
    model.seen[:4] = True
    out = model(x[:5]).double().numpy()
    assert out.shape == (5, 4)  # one logit per seen class
    assert np.allclose(out, H[:5] @ Wo[:, :4], rtol=1e-4, atol=1e-5)


def test_ranpac_fixed_ridge_and_no_projection():
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    model = ranpac.RandomProjectionRidge(n_classes=2, dim=2, M=0, ridge=0.5)
    model.update(x, y)
    model.finish_experience()
    X, Y = x.double().numpy(), np.eye(2)[y.numpy()]
    assert np.allclose(model.W.numpy(), np.linalg.solve(X.T @ X + 0.5 * np.eye(2), X.T @ Y), rtol=1e-6)
    assert model.ridges == [0.5]


def test_ranpac_statistics_of_two_experiences_equal_one_holding_both():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(48, 4, generator=gen)
    y = np.arange(48) % 4
    results = {}
    for name, exps in {"two": [[0, 1], [2, 3]], "one": [[0, 1, 2, 3]]}.items():
        torch.manual_seed(0)
        plan, scenario = toy_scenario(x, y, exps)
        tpl = build("ranpac", toy_context(plan, 4), M=16, batch_size=5)
        snaps = []
        for exp in scenario.train_stream:
            tpl.train(exp)
            snaps.append({k: v.clone() for k, v in tpl.model.state_dict().items()})
        results[name] = snaps
    two, one = results["two"], results["one"]
    assert torch.allclose(two[-1]["G"], one[-1]["G"], rtol=1e-5)
    assert torch.allclose(two[-1]["Q"], one[-1]["Q"], rtol=1e-5)
    # the second experience adds to the shared Gram matrix but leaves the earlier classes' prototypes
    assert not torch.allclose(two[0]["G"], two[1]["G"])
    assert torch.equal(two[0]["Q"][:, :2], two[1]["Q"][:, :2])
    assert torch.count_nonzero(two[0]["Q"][:, 2:]) == 0


def test_ranpac_options_are_checked():
    for kw, key in [({"epochs": 2}, "epochs"), ({"M": -1}, "M"), ({"ridge": 0.0}, "ridge")]:
        with pytest.raises(ConfigError, match=rf"strategies\[0\]\.{key}"):
            ranpac.RanPACOptions(**kw).validate("strategies[0]")


def test_ranpac_built_directly_refuses_a_width_that_cannot_fit_before_allocating(monkeypatch):
    """Built outside a run (no check_setup before it), the builder checks its memory itself: 10^10 x 10^10 float32
    is 4e20 bytes, refused in one line instead of a torch allocation error (or a machine swapping to death)."""
    plan, _ = toy_scenario(torch.zeros(4, 4), np.arange(4) % 2, [[0, 1]])
    allocated = []
    monkeypatch.setattr(ranpac.RandomProjectionRidge, "__init__", lambda *a, **k: allocated.append(a))
    with pytest.raises(ConfigError, match=r"^ranpac\.M: 10000000000 needs about .* PiB of memory on cpu \(its "
                                          r"10000000000 x 10000000000 Gram matrix alone is 355,271\.4 PiB\)"):
        build("ranpac", toy_context(plan, 4), M=10**10)
    assert allocated == []


# --------------------------------------------------------------------------- RAPF


def rotation(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]])


def test_rapf_fusion_by_hand():
    w_old = torch.diag(torch.tensor([2.0, 1.0]))  # U = I, S = (2, 1), Vh = I
    w_new = torch.tensor([[2.5, 0.2], [0.4, 1.3]])
    # |P - P_old| = [[.5, .2], [.4, .3]]; / .5 -> [[1, .4], [.8, .6]]; + .2 -> [[1.2, .6], [1., .8]];
    # clamp at 1 -> m = [[1, .6], [1, .8]]; m*new + (1-m)*old:
    expected = torch.tensor([[2.5, 0.6 * 0.2], [0.4, 0.8 * 1.3 + 0.2 * 1.0]])
    assert torch.allclose(rapf.fuse(w_old, w_new, bias=0.2), expected, atol=1e-6)
    # bias 0.6 (the default) keeps every entry here: the new weights come through unchanged
    assert torch.allclose(rapf.fuse(w_old, w_new, bias=0.6), w_new, atol=1e-6)
    # the comparison happens in the basis of the old weights' left singular vectors
    R = rotation(0.3)
    assert torch.allclose(rapf.fuse(R @ w_old, R @ w_new, bias=0.2), R @ expected, atol=1e-5)
    assert torch.allclose(rapf.fuse(w_old, w_old, bias=0.2), w_old)  # nothing changed, nothing moves


def test_rapf_adjustment_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # |t0 - t1| = sqrt(.04 + .36) = .632; |t0 - t2| = |t1 - t2| = sqrt(2) * ... > 1
    assert rapf.hard_pairs(text, [0], [1, 2], threshold=0.55).tolist() == []
    assert rapf.hard_pairs(text, [0], [1, 2], threshold=0.65).tolist() == [[0, 1]]
    assert rapf.hard_pairs(text, [0, 1], [2], threshold=0.65).tolist() == []
    feat = torch.tensor([[0.6, 0.8], [2.0, 0.0]])  # normalised inside: (.6, .8) and (1, 0)
    # row 1: cos to t1 = .48 + .48 = .96, to t0 = .6 -> .96 - .6 + .1 = .46; row 2: .8 - 1 + .1 < 0 -> 0
    loss = rapf.adjustment_hinge(feat, text[[0, 0]], text[[1, 1]])
    assert loss.item() == pytest.approx(0.23, abs=1e-6)


def test_rapf_class_statistics():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    stats = rapf.class_statistics(x, y)
    mean, cov = stats[0]
    assert torch.allclose(mean, torch.tensor([2.0, 3.0]))
    # deviations (-1,-1), (1,-1), (0,2): sums of products / (3 - 1)
    assert torch.allclose(cov, torch.tensor([[1.0, 0.0], [0.0, 3.0]]) + 1e-4 * torch.eye(2))
    assert torch.allclose(stats[1][1], 1e-4 * torch.eye(2))  # one sample: only the regulariser
    L = rapf.covariance_factor(cov)
    assert torch.allclose(L @ L.t(), cov, atol=1e-6)


class BeforeFusion(SupervisedPlugin):
    """The adapter's weight at the end of each experience's last epoch (before the fusion)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def after_training_epoch(self, strategy, **kwargs):
        if strategy.clock.train_exp_epochs == strategy.train_epochs - 1:
            self.weights.append(strategy.model.adapter.weight.detach().clone())


def rapf_toy():
    """Two classes in two experiences; their text features lie .2 apart, so they form a hard pair."""
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(12, 2, generator=gen) * 0.3 + torch.tensor([2.0, 0.0]),
                   torch.randn(12, 2, generator=gen) * 0.3 + torch.tensor([0.0, 2.0])])
    y = np.array([0] * 12 + [1] * 12)
    text = torch.tensor([[1.0, 0.0], [math.cos(0.2), math.sin(0.2)]])  # distance 2 sin(.1) = .1997
    return x, y, text


def test_rapf_keeps_statistics_fuses_after_training_and_adjusts_hard_pairs():
    x, y, text = rapf_toy()
    torch.manual_seed(0)
    plan, scenario = toy_scenario(x, y, [[0], [1]])
    spy = BeforeFusion()
    tpl = build("rapf", toy_context(plan, 2, text=text, plugins=[spy]), epochs=2, batch_size=6, beta=0.5)
    tpl.train(scenario.train_stream[0])
    model = tpl.model
    assert torch.equal(model.adapter.weight, spy.weights[0])  # no fusion after the first experience
    # one class in the first softmax gives no gradient; set the adapter to the identity so the old class's
    # features point at its own text feature, only .2 rad from the new class's: the hinge is active
    model.adapter.weight.data = torch.eye(2)
    after_first = model.adapter.weight.detach().clone()
    mean0, cov0 = model.means[0].clone(), model.covs[0].clone()
    xs = x[:12].double()
    assert torch.allclose(mean0, xs.mean(0).float())
    assert torch.allclose(cov0, (torch.cov(xs.t()) + 1e-4 * torch.eye(2, dtype=torch.float64)).float(), atol=1e-6)

    # the criterion of the second experience: CE over real + drawn features, plus the hinge on the hard pair
    seen = {}
    real_criterion = rapf.RAPFTemplate.criterion

    def spy_criterion(self):
        if self.is_training and "loss" not in seen:
            state = torch.get_rng_state()
            loss = real_criterion(self)
            torch.set_rng_state(state)  # redraw the same pseudo-features by hand
            n_old, n_pair = int(10 * self.beta), int(20 * self.beta)
            # two old classes per batch by default; with one old class it is drawn twice, as main.py does
            drawn = torch.cat([torch.randn(n_old, 2) @ self.factors[0].t() + self.model.means[0] for _ in range(2)])
            edge = torch.randn(n_pair, 2) @ self.factors[0].t() + self.model.means[0]
            t = F.normalize(text, dim=-1)
            ce = F.cross_entropy(torch.cat([self.mb_output, 10.0 * F.normalize(self.model.adapter(drawn), dim=-1) @ t.t()]),
                                 torch.cat([self.mb_y, torch.zeros(2 * n_old, dtype=torch.long)]))
            e = F.normalize(self.model.adapter(edge), dim=-1)
            hinge = F.relu(-(e @ t[0]) + (e @ t[1]) + 0.1).mean()
            seen.update(loss=loss.item(), expected=(ce + hinge).item(), pairs=self.pairs.tolist(),
                        hinge=hinge.item())
            return loss
        return real_criterion(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rapf.RAPFTemplate, "criterion", spy_criterion)
        tpl.train(scenario.train_stream[1])
    assert seen["pairs"] == [[0, 1]]
    assert seen["hinge"] > 0  # the toy is built so the adjustment is active
    assert seen["loss"] == pytest.approx(seen["expected"], rel=1e-5)
    # the old class's statistics are untouched; the new class has its own
    assert torch.equal(model.means[0], mean0) and torch.equal(model.covs[0], cov0)
    assert torch.allclose(model.means[1], x[12:].mean(0), atol=1e-6)
    # the adapter ends as the fusion of the copy kept before training with the trained weights
    assert torch.allclose(model.adapter.weight, rapf.fuse(after_first, spy.weights[1], 0.6), atol=1e-6)
    model.eval()
    assert model(x[:3]).shape == (3, 2)


def test_rapf_options_are_checked():
    for kw, key in [({"beta": 0}, "beta"), ({"mix_bias": 1.5}, "mix_bias"), ({"template": "no slot"}, "template"),
                    ({"old_classes_per_batch": 0}, "old_classes_per_batch")]:
        with pytest.raises(ConfigError, match=rf"strategies\[0\]\.{key}"):
            rapf.RAPFOptions(**kw).validate("strategies[0]")


# --------------------------------------------------------------------------- through the runner


@pytest.fixture(scope="module")
def peer_runs(tmp_path_factory, feature_store):
    """``peer_runs(views)``: the three run through the runner on digits with ``features.train_views: views``,
    as (records, output folder); each run once per module (the centre-crop run serves both tests below),
    every run reading the session's feature store."""
    root = tmp_path_factory.mktemp("peers")
    done = {}

    def runs(views: int):
        if views not in done:
            data = {"name": "views", "seeds": [0], "device": "cpu",
                    "benchmark": {"dataset": "digits", "n_experiences": 2, "shots": 8,
                                  "class_order": "seeded", "order_seed": 0},
                    "model": {"arch": "lamm-tiny", "pretrained": "none"},
                    "features": {"cache": True, "cache_dir": str(feature_store), "train_views": views},
                    "strategies": [{"name": "simplecil"}, {"name": "ranpac", "M": 64},
                                   {"name": "rapf", "epochs": 2, "batch_size": 8}]}
            out = root / f"out{views}"
            done[views] = runner.run(config.parse(data), out, progress=False), out
        return done[views]

    return runs


@pytest.mark.integration
def test_the_three_run_through_the_runner(peer_runs):
    records, out = peer_runs(0)
    assert [r.strategy for r in records] == ["simplecil", "ranpac", "rapf"]
    for r in records:
        assert np.isfinite(r.matrix[np.tril_indices(2)]).all()
        assert (out / r.strategy / "seed0" / "summary.json").is_file()


def test_published_figures_of_the_three_carry_their_weights():
    from lamm_cl.report import match_published

    def figures(arch, pretrained):
        cfg = {"benchmark": {"dataset": "cifar100", "shots": None}, "model": {"arch": arch, "pretrained": pretrained}}
        return {(r["method"], r["metric"]): r["value"] for r in match_published(cfg, 10)}

    openai = figures("ViT-B-16", "openai")
    assert openai[("RAPF", "avg_incremental_accuracy")] == "86.19"
    assert openai[("RAPF", "last_accuracy")] == "79.04"
    assert not any("RanPAC" in m or "SimpleCIL" in m for m, _ in openai)  # RanPAC published no OpenAI figures
    laion = figures("ViT-B-32", "laion2b_s34b_b79k")
    assert laion[("RanPAC (no first-session adaptation)", "last_accuracy")] == "85.0"
    in21k = figures("ViT-B-16", "timm:vit_base_patch16_224_in21k")
    assert in21k[("RanPAC (no first-session adaptation)", "last_accuracy")] == "89.0"


@pytest.mark.integration
@pytest.mark.parametrize("name, opts", [("simplecil", {}), ("ranpac", {"M": 16}),
                                        ("rapf", {"epochs": 2, "batch_size": 8})])
def test_a_checkpoint_after_the_first_experience_continues_bit_identically(tmp_path, name, opts):
    from lamm_cl import checkpoint

    x, y, _ = rapf_toy()
    x = torch.cat([x, x + 1.0])
    y = np.concatenate([y, y + 2])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    plan, scenario = toy_scenario(x, y, [[0, 1], [2, 3]])
    fake_clip = SimpleNamespace(model=torch.nn.Module())

    def fresh():
        torch.manual_seed(0)
        return build(name, toy_context(plan, 2, text=text), **opts)

    tpl = fresh()
    tpl.train(scenario.train_stream[0])
    path = checkpoint.save(tmp_path / "checkpoint.pt", template=tpl,
                           refs=checkpoint.references(tpl, scenario, fake_clip), skip_plugins=[], experience=0,
                           matrix=np.zeros((2, 2)), matrix_task_aware=np.zeros((2, 2)), per_class={}, seconds=0.0,
                           meta={})
    tpl.train(scenario.train_stream[1])
    resumed = fresh()
    checkpoint.restore(resumed, scenario, checkpoint.load(path),
                       lambda t: checkpoint.references(t, scenario, fake_clip))
    resumed.train(scenario.train_stream[1])
    a, b = tpl.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- which training view they read


@pytest.mark.integration
def test_the_three_read_the_centre_crop_even_with_augmented_views(peer_runs):
    """The references take their statistics (and RAPF trains) on un-augmented training images: PILOT's
    SimpleCIL and RanPAC read ``mode="test"`` loaders for the prototypes, RAPF's ``main.py`` reads CLIP's own
    preprocessing for training and for ``analyze_mean_cov``. So ``features.train_views`` must not change
    what they compute: a run with augmented views gives the very matrix of the centre-crop run."""
    for name in ("simplecil", "ranpac", "rapf"):
        assert get_strategy(name).augmented_views is False, name
    assert get_strategy("linear_probe").augmented_views is True  # the default is untouched

    def matrices(views):
        return {r.strategy: (r.matrix, r.per_class_accuracy) for r in peer_runs(views)[0]}

    centre, augmented = matrices(0), matrices(2)
    for name in ("simplecil", "ranpac", "rapf"):
        np.testing.assert_array_equal(augmented[name][0], centre[name][0], err_msg=name)
        assert augmented[name][1] == centre[name][1], name


def test_rapf_adapter_and_logits_stay_float32_under_autocast():
    """The reference trains the adapter in float32 (``fp16: false``); the training forward of a CUDA run
    happens under bf16 autocast, which must not reach RAPF's adapter. Checked with CPU autocast, which
    casts ``nn.Linear`` to bf16 the same way."""
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    model = rapf.AdaptedTextClassifier(text, logit_scale=100.0, dim=3)
    A = torch.tensor([[1.01, 0.02, -0.03], [0.01, 0.97, 0.05], [-0.02, 0.04, 1.03]])
    model.adapter.weight.data.copy_(A)
    model.seen[:3] = True
    x = torch.tensor([[1.234, 0.567, 0.891], [0.123, 2.345, 0.678]])
    # by hand, in float64: 100 * normalize(x Aᵀ) · tᵀ (the text rows above are unit vectors)
    z = x.double() @ A.double().t()
    expected = 100.0 * (z / z.norm(dim=1, keepdim=True)) @ text.double().t()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        emb = model.embed(x)
    assert out.dtype == torch.float32 and emb.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=1e-4)  # bf16 would be off by ~0.1-0.5


def test_rapf_shrinkage_by_hand():
    """``models.py`` ``shrink_cov``: + mean diagonal on the diagonal, + mean non-zero off-diagonal entry off it."""
    cov = torch.tensor([[2.0, 1.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 6.0]])
    # mean diagonal (2 + 4 + 6) / 3 = 4; the non-zero off-diagonal entries are the two 1s: mean 1
    expected = torch.tensor([[6.0, 2.0, 1.0], [2.0, 8.0, 1.0], [1.0, 1.0, 10.0]])
    assert torch.allclose(rapf.shrink_covariance(cov), expected)
