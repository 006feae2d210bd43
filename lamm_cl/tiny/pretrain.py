"""Pretraining ``lamm-tiny`` from scratch on tinyworld with open_clip's own contrastive loss.

The run is deterministic on CPU: one fixed set of scenes (rendered once), one torch thread
(an intra-op reduction split over more threads may round differently), seeded torch and numpy,
and torch's deterministic algorithms. The same torch build on the same kind of CPU writes
the same bytes; the shipped weights were made with :func:`pretrain`'s defaults.
"""
from __future__ import annotations

import hashlib
import io
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lamm_cl.tiny import world

# open_clip's image normalisation (what lamm-tiny's preprocess applies after ToTensor)
_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass
class PretrainSettings:
    """Everything that decides the weights (the defaults made the shipped file)."""

    seed: int = 0
    scenes: int = 12800  # pretraining pictures, rendered once; captions are redrawn every epoch
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3  # AdamW peak, after a linear warm-up, then cosine to 0 (per step)
    warmup_steps: int = 50
    weight_decay: float = 0.1  # on matrices only, as open_clip's training script does
    val_scenes: int = 500  # in-distribution pictures for the per-epoch shape accuracy line


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, 32, 32, 3]`` -> normalised float ``[N, 3, 32, 32]``, as lamm-tiny's preprocess does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN) / _STD


class _Tokens:
    """open_clip's tokenizer with a cache (captions repeat a lot), cutting each batch after its longest EOT."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            for t, ids in zip(new, self.tokenizer(new)):
                self.cache[t] = ids
        ids = torch.stack([self.cache[t] for t in texts])
        eot = ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        return ids[:, : int(eot.max()) + 1], eot


def encode_text(model, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on token ids cut after the longest EOT (the causal mask makes it equal to the full
    77-token forward, see lamm_cl.model.clip.FrozenCLIP.encode_text_embeddings)."""
    n = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)[torch.arange(len(ids)), eot]
    return x @ model.text_projection


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, rest = [], []
    for name, p in model.named_parameters():
        # open_clip's main.py: no decay on gains, biases, embeddings and the logit scale
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (rest if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def shape_accuracy(model, tokens: _Tokens, images: torch.Tensor, labels: np.ndarray) -> float:
    """Zero-shot accuracy (%) of ``model`` at naming the shape, with "a photo of a {shape}."."""
    was_training = model.training
    model.eval()
    ids, eot = tokens([f"a photo of a {s}." for s in world.SHAPES])
    text = F.normalize(encode_text(model, ids, eot), dim=-1)
    img = F.normalize(model.encode_image(images), dim=-1)
    pred = (img @ text.t()).argmax(dim=1).numpy()
    model.train(was_training)
    return float((pred == labels).mean() * 100)


def state_bytes(model) -> bytes:
    """The model's state dict in half precision, serialised by ``torch.save``."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def pretrain(settings: PretrainSettings = PretrainSettings(),
             log: Optional[Callable[[str], None]] = None) -> bytes:
    """Train lamm-tiny from scratch on tinyworld and return its half-precision state dict as bytes.

    Args:
        settings: data, schedule and optimiser settings.
        log: receives one progress line per epoch (default: stderr).
    """
    from lamm_cl.model.clip import TINY_ARCH, _open_clip

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        open_clip = _open_clip()
        torch.manual_seed(settings.seed)
        model = open_clip.create_model(TINY_ARCH, pretrained=None)
        model.train()
        tokens = _Tokens(open_clip.get_tokenizer(TINY_ARCH))
        loss_fn = open_clip.loss.ClipLoss()

        rng = np.random.default_rng(settings.seed)
        t0 = time.monotonic()
        scenes = [world.sample_scene(rng) for _ in range(settings.scenes)]
        images = to_tensor(np.stack([world.render(s, rng, noise=world.PRETRAIN_NOISE) for s in scenes]))
        val = [world.sample_scene(rng) for _ in range(settings.val_scenes)]
        val_images = to_tensor(np.stack([world.render(s, rng, noise=world.PRETRAIN_NOISE) for s in val]))
        val_labels = np.array([s.shape for s in val])
        log(f"tinyworld: {settings.scenes} scenes rendered in {time.monotonic() - t0:.0f} s; "
            f"settings {asdict(settings)}")

        opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr,
                                betas=(0.9, 0.98), eps=1e-6)
        steps_per_epoch = settings.scenes // settings.batch_size  # the last partial batch is dropped
        total = steps_per_epoch * settings.epochs
        step = 0
        for epoch in range(settings.epochs):
            order = rng.permutation(settings.scenes)
            texts = [world.caption(scenes[i], rng) for i in range(settings.scenes)]  # fresh captions each epoch
            running = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * settings.batch_size: (b + 1) * settings.batch_size]
                lr = settings.lr * min(1.0, (step + 1) / settings.warmup_steps) \
                    * 0.5 * (1 + math.cos(math.pi * step / total))
                for g in opt.param_groups:
                    g["lr"] = lr
                ids, eot = tokens([texts[i] for i in idx])
                img = F.normalize(model.encode_image(images[idx]), dim=-1)
                txt = F.normalize(encode_text(model, ids, eot), dim=-1)
                loss = loss_fn(img, txt, model.logit_scale.exp())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))  # as open_clip's training loop does
                running += loss.item()
                step += 1
            acc = shape_accuracy(model, tokens, val_images, val_labels)
            log(f"epoch {epoch + 1}/{settings.epochs}: contrastive loss {running / steps_per_epoch:.4f}, "
                f"shape zero-shot {acc:.1f}% (in-distribution), logit scale "
                f"{model.logit_scale.exp().item():.1f}, {time.monotonic() - t0:.0f} s")
        return state_bytes(model)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
