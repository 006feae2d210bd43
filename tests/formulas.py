"""The loss formulas written out (cross-entropy by log-sum-exp, cosines by dot products of normalised
rows), nothing from lamm_cl.losses: the expected values of the objective tests."""
from __future__ import annotations

import torch


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_b [ log sum_c exp z_bc - z_b,y_b ]"""
    return (torch.logsumexp(z, dim=-1) - z[torch.arange(len(y)), y]).mean()


def feature_term(t: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
    """mean_b [ 1 - <t_b, t0_b> / (|t_b| |t0_b|) ], t0 a constant (every sample's batch holds another class)."""
    return (1 - (unit(t) * unit(t0.detach())).sum(-1)).mean()


def logits_term(z: torch.Tensor, z0: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 mean_b [ -sum_c softmax(z_b / T)_c log softmax(z0_b / T)_c ]"""
    p = torch.exp(z / T) / torch.exp(z / T).sum(-1, keepdim=True)
    log_q = z0 / T - torch.logsumexp(z0 / T, dim=-1, keepdim=True)
    return -(p * log_q).sum(-1).mean() * T * T
