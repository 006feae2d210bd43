"""RanPAC: a frozen random projection with a nonlinearity, then ridge regression on class prototypes.

McDonnell, Gong, Parvaneh, Abbasnejad, van den Hengel, "RanPAC: Random Projections and Pre-trained
Models for Continual Learning", NeurIPS 2023 (arXiv 2307.02251); reference code RanPAC/RanPAC
``RanPAC.py`` (``setup_RP``, ``replace_fc``, ``optimise_ridge_parameter``) and ``inc_net.py``
(``CosineLinear.forward`` with ``use_RP``); line numbers cite ``RanPAC.py`` @698e00c, ``inc_net.py``
@a460ac0 and ``args/cifar224_publish.csv`` @a460ac0, whose row ID 4 (line 6: ``ncm``, ``use_RP`` True,
M 10000, no tuned epochs) is the setting reproduced here. LAMDA-PILOT's ``models/ranpac.py`` is the
same algorithm (the same λ search, solve and ReLU projection) behind an always-on first-session
adaptation.

Every image feature x is projected once, h = ReLU(x W), with W a fixed ``[dim, M]`` matrix of
standard normal entries (M = 10,000; ``RanPAC.py:254``, ``inc_net.py:35``). Over all experiences so far
the strategy accumulates the Gram matrix G = Σ h hᵀ and the class-prototype matrix Q = Σ h yᵀ (y one-hot
over every class of the benchmark; ``RanPAC.py:115,122-123``), and after each experience solves the
ridge regression W_o = (G + λI)⁻¹ Q (``RanPAC.py:125``); a test feature scores h W_o, one column per
seen class (``inc_net.py:39``: ``F.linear(h, W_oᵀ)``, times a scale σ that stays 1, ``inc_net.py:28``).
G and Q are sums, so they are the same whether the data came in one experience or in many; the
columns of Q that belong to earlier classes never change, G (shared by all classes) grows with every
experience, and so the solution for every class moves -- as the paper intends.

λ is chosen per experience as the reference does (``RanPAC.py:124,138-150``): the experience's own
features, in the order the (shuffled) training loader delivered them, are split 80/20; for every λ in
10⁻⁸, 10⁻⁷, ..., 10⁸ a ridge fit on the first 80% (that experience's data only) is scored by the mean
squared error of its one-hot predictions on the last 20%; the best λ (the smallest on ties) then
solves the full accumulated system. G, Q and the λ search read the un-augmented training images
(``RanPAC.py:167-168``: ``train_loader_for_CPs`` is a shuffled ``mode="test"`` loader), so the
strategy is registered with ``augmented_views=False``: the centre crop even when
``features.train_views > 0``. ``M: 0`` skips the projection (the paper's "no RP" ablation: ridge on
the raw features; ``RanPAC.py:97-100,120-121,256-258``).

Deviations from the reference, on purpose:

* RanPAC's first-session adaptation (Phase 1: parameter-efficient fine-tuning of the backbone on the
  first experience, ``RanPAC.py:225-236``) is out of scope: lamm-cl's encoder is frozen and its
  features cached. This is the paper's "No Phase 1" / SI "Phase 2 only" setting, the reference's
  ``model_name: ncm`` with ``use_RP`` (``RanPAC.py:210-211`` freezes the backbone, 228 skips the
  fine-tuning).
* The features are CLIP's projected image embeddings from the shared store, not a timm ViT's pooled
  features (for CLIP, the reference runs timm's ``vit_base_patch32_224_clip_laion2b`` without head).
* The 17 trial fits of the λ search come from one eigendecomposition (of the n×n kernel of the 80%
  part when it has fewer samples than M, else of its M×M Gram matrix) instead of 17 linear solves;
  in exact arithmetic the fits are the same. The search and the final solve run in float64 (the
  reference solves in float32); G and Q are kept in float32 as in the reference.
* W is drawn from a generator seeded with the run's seed (``projection_seed`` overrides it), so
  every seed is reproducible.
* An experience with fewer than two training samples cannot be split; λ is then 1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate

from lamm_cl.errors import ConfigError
from lamm_cl.registry import register_strategy
from lamm_cl.strategy_kit.context import StrategyContext
from lamm_cl.strategy_kit.options import RanPACOptions, size_text
from lamm_cl.strategy_kit.setup import free_memory
from lamm_cl.strategy_kit.recipe import idle_optimizer
from lamm_cl.strategy_kit.statistics import SeenClasses, StatisticsTemplate

RIDGES: tuple[float, ...] = tuple(10.0 ** k for k in range(-8, 9))  # RanPAC.py:139: 10.0**np.arange(-8, 9)
TRAIN_FRACTION = 0.8  # RanPAC.py:140 optimise_ridge_parameter: int(N * 0.8) samples fit, the rest score


def ridge_validation_losses(h_fit: torch.Tensor, y_fit: torch.Tensor, h_val: torch.Tensor, y_val: torch.Tensor,
                            ridges: Sequence[float]) -> torch.Tensor:
    """Mean squared error on ``(h_val, y_val)`` of the ridge fit on ``(h_fit, y_fit)``, for every λ.

    The fit for λ is W = (HᵀH + λI)⁻¹ Hᵀ Y = Hᵀ (HHᵀ + λI)⁻¹ Y; both forms come from one
    eigendecomposition of whichever Gram matrix is smaller.

    Args:
        h_fit: ``[n, M]`` features of the fitting part; ``y_fit``: ``[n, C]`` targets.
        h_val: ``[m, M]``; ``y_val``: ``[m, C]``.
        ridges: the λ candidates.

    Returns:
        ``[len(ridges)]`` float64 losses (mean over the ``m × C`` entries, as ``F.mse_loss``).
    """
    h, y = h_fit.double(), y_fit.double()
    hv, yv = h_val.double(), y_val.double()
    n, m_dim = h.shape
    if n <= m_dim:  # dual: predictions = (hv hᵀ) (h hᵀ + λI)⁻¹ y
        evals, vecs = torch.linalg.eigh(h @ h.t())
        left = (hv @ h.t()) @ vecs  # [m, n]
        right = vecs.t() @ y  # [n, C]
    else:  # primal: predictions = hv (hᵀh + λI)⁻¹ hᵀ y
        evals, vecs = torch.linalg.eigh(h.t() @ h)
        left = hv @ vecs  # [m, M]
        right = vecs.t() @ (h.t() @ y)  # [M, C]
    evals = evals.clamp(min=0)  # a Gram matrix is positive semi-definite; eigh can return -1e-12
    losses = [F.mse_loss(left @ (right / (evals + lam).unsqueeze(1)), yv) for lam in ridges]
    return torch.stack(losses)


def ridge_solve(G: torch.Tensor, Q: torch.Tensor, lam: float) -> torch.Tensor:
    """(G + λI)⁻¹ Q in float64 (RanPAC.py solves rather than inverts, for stability).

    G + λI is symmetric positive definite, so a Cholesky factorisation (half the work of the
    reference's LU solve) does it; a general solve takes over if rounding made it fail.
    """
    a = G.double()  # a copy: λ goes onto its diagonal in place (the same sums as G + λI, without two more M x M)
    a.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(Q.double(), L)
    return torch.linalg.solve(a, Q.double())


def select_ridge(h: torch.Tensor, y: torch.Tensor, ridges: Sequence[float] = RIDGES,
                 fit_fraction: float = TRAIN_FRACTION) -> float:
    """RanPAC's λ: fit on the first ``fit_fraction`` of ``(h, y)`` (in the given order), score on the rest.

    Args:
        h: ``[N, M]`` projected features of one experience, in arrival order.
        y: ``[N, C]`` one-hot targets.

    Returns:
        The λ with the lowest validation error (the first such in ``ridges``); 1.0 when ``N < 2``.
    """
    n_fit = int(h.shape[0] * fit_fraction)
    if n_fit < 1 or n_fit >= h.shape[0]:
        return 1.0
    losses = ridge_validation_losses(h[:n_fit], y[:n_fit], h[n_fit:], y[n_fit:], ridges)
    return float(ridges[int(torch.argmin(losses))])  # first minimum, as np.argmin (RanPAC.py:148)


class RandomProjectionRidge(SeenClasses):
    """RanPAC's head: h = ReLU(x W) (or h = x when ``M == 0``), statistics G, Q, and the ridge solution.

    Args:
        n_classes: classes in the whole benchmark (Q's columns; buffers are sized up front so a
            checkpoint's state fits a freshly built model).
        dim: feature width.
        M: projection width (0: no projection).
        seed: seeds the projection's generator.
        ridge: a fixed λ, or None to select it per experience.
    """

    saved_model_skips = ("G", "Q")  # scoring reads the projection and W only: a saved model leaves G, Q out

    def __init__(self, n_classes: int, dim: int, M: int = 10000, seed: int = 0, ridge: Optional[float] = None):
        super().__init__(n_classes)
        width = M if M > 0 else dim
        gen = torch.Generator().manual_seed(seed)
        # RanPAC.py:254 setup_RP: W_rand = torch.randn(in_features, M), no scaling
        self.register_buffer("projection", torch.randn(dim, M, generator=gen) if M > 0 else torch.zeros(0))
        self.register_buffer("G", torch.zeros(width, width))
        self.register_buffer("Q", torch.zeros(width, n_classes))
        self.register_buffer("W", torch.zeros(width, n_classes))  # the ridge solution W_o
        self.fixed_ridge = ridge
        self.ridges: list[float] = []  # λ chosen after each experience, for the record
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # this experience's (x, y), in arrival order

    @property
    def n_classes(self) -> int:
        return int(self.Q.shape[1])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """h = ReLU(x W), or x itself without a projection (``RanPAC.py:118-121``)."""
        x = x.float()
        return F.relu(x @ self.projection) if self.projection.numel() else x

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch to G and Q and keep it for this experience's λ search."""
        h = self.project(x)
        self.G += h.t() @ h
        self.Q += h.t() @ F.one_hot(y, self.n_classes).to(h.dtype)
        self._pending.append((x.detach().float(), y.detach()))

    @torch.no_grad()
    def finish_experience(self) -> None:
        """Choose λ on this experience's data (unless fixed) and solve W = (G + λI)⁻¹ Q."""
        pending, self._pending = self._pending, []
        if self.fixed_ridge is not None:
            lam = self.fixed_ridge
        elif not pending:  # no new data: keep the last choice
            lam = self.ridges[-1] if self.ridges else 1.0
        else:
            x = torch.cat([p[0] for p in pending])
            y = torch.cat([p[1] for p in pending])
            lam = select_ridge(self.project(x), F.one_hot(y, self.n_classes).float())
        self.ridges.append(lam)
        self.W.copy_(ridge_solve(self.G, self.Q, lam).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restrict(self.project(x) @ self.W)


@register_strategy("ranpac", options=RanPACOptions, augmented_views=False)  # RanPAC.py: mode="test" loader
def build(ctx: StrategyContext, opts: RanPACOptions) -> SupervisedTemplate:
    """RanPAC (McDonnell et al., NeurIPS 2023): fixed random projection + ReLU, ridge on accumulated Gram/prototypes."""
    seed = ctx.seed if opts.projection_seed is None else opts.projection_seed
    # the run checked this before anything trained (check_setup); a direct build is checked here, before allocating
    opts.check_memory(ctx.clip.embed_dim, len(ctx.class_names), 0, str(ctx.device), free_memory(ctx.device), "ranpac")
    try:
        model = RandomProjectionRidge(len(ctx.class_names), ctx.clip.embed_dim, M=opts.M, seed=seed, ridge=opts.ridge)
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError; free memory was unknown
        need, _ = opts.memory_needed(ctx.clip.embed_dim, len(ctx.class_names), 0)
        raise ConfigError(f"ranpac.M: {opts.M} needs about {size_text(need)} of memory on {ctx.device}, which "
                          f"could not be allocated ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); "
                          "lower M") from None
    return StatisticsTemplate(model=model, optimizer=idle_optimizer(), **ctx.template_kwargs(opts))
