"""The LAMM hierarchical loss (arXiv 2312.08212): parameter, feature and logits space.

    loss = CE(z, y) + lambda_p * L_param + lambda_f * L_feat + lambda_l * L_logits

with z = alpha * f t^T (label vectors in the prompts) and z0 = alpha * f t0^T
(CLIP's own name embeddings). Each term is a small pure function so that tests
can check it against numbers worked by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F


def param_loss(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """L_param = sum over trainable classes of ||M_c - M0_c||^2 (a plain sum of squares).

    Args:
        pairs: (M_c, M0_c) for every trainable class.
    """
    total = None
    for m, m0 in pairs:
        term = (m - m0.detach()).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


def feature_loss(t: torch.Tensor, t0: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_feat = mean of 1 - cos(t_y, stopgrad(t0_y)) over the samples that count.

    With ``y``, a sample counts only when the batch also holds a sample of another class, so a
    batch of one class gives 0 -- the reference's ``FeatureLoss`` skips sample i unless
    ``torch.sum(label != label[i]) > 0`` and divides by the samples it kept
    (gaojingsheng/LAMM trainers/coop.py:63-83). Without ``y`` every sample counts.

    Args:
        t: ``[B, D]`` text features of each sample's class with label vectors.
        t0: ``[B, D]`` the same with CLIP's own name embeddings (the target).
        y: ``[B]`` each sample's class, or None.
    """
    dist = 1.0 - F.cosine_similarity(t, t0.detach(), dim=-1)
    if y is None:
        return dist.mean()
    # a sample has company of another class iff not every label equals its own
    counts = (y.unsqueeze(0) != y.unsqueeze(1)).any(dim=1)
    if not bool(counts.any()):
        return dist.sum() * 0.0  # zero, still on the graph and the device
    return dist[counts].mean()


def logits_loss(z: torch.Tensor, z0: torch.Tensor, temperature: float = 2.0, kind: str = "reference") -> torch.Tensor:
    """L_logits, scaled by T^2.

    ``reference`` (what the LAMM code computes; not a KL divergence):
    T^2 * mean_b [ -sum_c softmax(z/T)_c * log_softmax(z0/T)_c ] -- the LAMM
    logits z are the soft target and keep their gradient.
    ``kl`` (standard distillation): T^2 * KL(softmax(z0/T) || softmax(z/T)),
    averaged over the batch, with z0 as the teacher.
    """
    T = float(temperature)
    if kind == "reference":
        target = F.softmax(z / T, dim=-1)
        return -(target * F.log_softmax(z0 / T, dim=-1)).sum(-1).mean() * T * T
    if kind == "kl":
        teacher = F.log_softmax(z0.detach() / T, dim=-1)
        student = F.log_softmax(z / T, dim=-1)
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * T * T
    raise ValueError(f"logits_kind must be 'reference' or 'kl', got {kind!r}")


@dataclass
class LammWeights:
    """Weights of the three alignment terms and the distillation temperature."""

    param: float = 1.0  # lambda_p; the config's `auto`: 1/shots when few-shot and incremental, else 1
    feature: float = 1.0  # lambda_f
    logits: float = 0.05  # lambda_l
    temperature: float = 2.0  # T
    logits_kind: str = "reference"  # reference | kl


def lamm_loss(
    z: torch.Tensor,
    z0: torch.Tensor,
    y: torch.Tensor,
    t_y: torch.Tensor,
    t0_y: torch.Tensor,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    w: LammWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The full LAMM objective and its parts (as floats, for logging).

    Args:
        z, z0: ``[B, C]`` logits with label vectors / with CLIP's name embeddings,
            over the classes of the training softmax.
        y: ``[B]`` targets indexing those columns (also which samples the feature term counts).
        t_y, t0_y: ``[B, D]`` the two text features of each sample's class.
        pairs: (M_c, M0_c) for every trainable class.
        w: weights and temperature.
    """
    ce = F.cross_entropy(z, y)
    lp = param_loss(pairs).to(z.device)
    lf = feature_loss(t_y, t0_y, y)
    ll = logits_loss(z, z0, w.temperature, w.logits_kind)
    total = ce + w.param * lp + w.feature * lf + w.logits * ll
    parts = {k: float(v.detach()) for k, v in (("ce", ce), ("param", lp), ("feature", lf), ("logits", ll))}
    return total, parts
