"""Mixed precision on CUDA (the CPU path stays fp32 and untouched), and the encoder's batch size.

``model.precision`` picks one of three: ``bf16-autocast`` (the default) keeps fp32 weights and runs
forward passes under bf16 autocast on CUDA; ``fp16`` holds the weights themselves in fp16 (the model is
built so, :func:`lamm_cl.model.clip.build_clip`) and needs no autocast; ``fp32`` runs without autocast
or TF32. :func:`arithmetic` names what a forward pass actually computes in, for the feature store's keys.
"""
from __future__ import annotations

import contextlib

import torch

from avalanche.training.plugins import SupervisedPlugin


def autocast(device: torch.device, training: bool = False, precision: str = "bf16-autocast"):
    """Autocast for a forward pass on ``device``: bf16 on CUDA where supported; a no-op on CPU, and a
    no-op for ``precision`` ``fp16`` (the weights are fp16 already) or ``fp32``.

    Without bf16, inference may use fp16; training stays fp32 (fp16 training would need a loss scaler).
    """
    if device.type != "cuda" or precision != "bf16-autocast":
        return contextlib.nullcontext()
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext() if training else torch.autocast("cuda", dtype=torch.float16)


def arithmetic(device: torch.device, precision: str) -> str:
    """What the image encoder computes in on ``device`` under ``precision``: ``fp16`` (fp16 weights),
    ``bf16-autocast`` or ``fp16-autocast`` (CUDA autocast, :func:`autocast`), or ``fp32`` (no autocast: on
    CPU ``bf16-autocast`` is plain fp32 too, so the two share their stored features there)."""
    if precision == "fp16":
        return "fp16"
    if device.type == "cuda" and precision == "bf16-autocast":
        return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp16-autocast"
    return "fp32"


def extraction_batch_size(device: torch.device) -> int:
    """Images per encoder call: 64 on CPU; on CUDA 128 per 8 GiB of device memory, 128 to 1024."""
    if device.type != "cuda":
        return 64
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return int(min(1024, max(128, 128 * (gib // 8))))


class AutocastPlugin(SupervisedPlugin):
    """Runs each training forward pass and loss under CUDA autocast (bf16); backward runs outside it."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self._ctx = None

    def before_forward(self, strategy, **kwargs):
        self._ctx = autocast(self.device, training=True)  # attached only with model.precision bf16-autocast
        self._ctx.__enter__()

    def before_backward(self, strategy, **kwargs):
        self._exit()

    def after_training_iteration(self, strategy, **kwargs):
        self._exit()  # in case a plugin skipped backward

    def _exit(self):
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)
