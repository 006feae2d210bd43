"""CLIP's zero-shot classifier made incremental: logits = alpha * f t^T over every class seen so far.

One module serves zero-shot CLIP, LAMM, CoOp and CoOp+LAMM: the text feature
t_c of a class comes from its prompt, with a shared context (CoOp) and/or its
label vectors (LAMM) spliced in. Text features that cannot change during the
current experience -- every class when nothing on the text side trains, the
old classes when only the current classes' label vectors do -- are encoded once
and cached; only trainable prompts go through the text encoder with gradients.
The prompt prefix every class shares (``[SOS] a photo of a``, or ``[SOS]`` and
CoOp's context) is encoded once: per step with gradient while the context
trains, otherwise once per experience (:mod:`lamm_cl.model.shared_prefix`).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from avalanche.models import DynamicModule

from lamm_cl.model.clip import FrozenCLIP, normalize
from lamm_cl.model.labels import LabelTable
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.model.shared_prefix import PrefixCache, PrefixState, describe, version_key

logger = logging.getLogger(__name__)


class PromptClassifier(DynamicModule):
    """Cosine classifier over cached image features with prompt-made class weights.

    Args:
        clip: the frozen CLIP (held by reference, not as a submodule: it is not trained
            and its weights do not belong in this module's state).
        prompts: per-class token layout for every class of the benchmark.
        labels: LAMM label table, or None to keep the class names as words.
        context: CoOp's shared context ``[n_ctx, W]``, or None to keep the template's words.

    Attributes:
        shared_prefix: run the shared prefix once (True where the text tower fits, see
            :func:`~lamm_cl.model.shared_prefix.unfit_reason`); False runs every prompt whole.
    """

    def __init__(self, clip: FrozenCLIP, prompts: ClassPrompts, labels: Optional[LabelTable] = None,
                 context: Optional[nn.Parameter] = None):
        super().__init__()
        self._clip = [clip]  # a list hides it from nn.Module's registry (no .to(), no state_dict)
        self.encoder = PromptEncoder(clip, prompts)
        self.labels = labels
        self.context = context
        self.classes: list[int] = []
        self._cache: Optional[torch.Tensor] = None  # frozen text features, normalised, rows = _cached
        self._cached: list[int] = []
        self._original: dict[int, torch.Tensor] = {}  # t0 of classes, when it is a constant
        self._original_context: Optional[torch.Tensor] = None  # the context _original was encoded with
        self.last_text: Optional[torch.Tensor] = None  # t of every class, from the last forward
        self.shared_prefix = self.encoder.unfit is None
        self._prefix = PrefixCache()
        logger.info(describe(self.encoder.unfit))

    @property
    def clip(self) -> FrozenCLIP:
        return self._clip[0]

    @property
    def logit_scale(self) -> float:
        return self.clip.logit_scale

    def _context_trains(self) -> bool:
        return self.context is not None and self.context.requires_grad

    def _trainable_classes(self) -> list[int]:
        if self._context_trains():
            return list(self.classes)
        return list(self.labels.trainable) if self.labels is not None else []

    def adaptation(self, experience) -> None:
        """Avalanche hook: add the experience's unseen classes (label tables grow on their own)."""
        new = [int(c) for c in sorted(experience.classes_in_this_experience) if int(c) not in self.classes]
        if new:
            self.classes.extend(new)
            self.invalidate()

    def invalidate(self) -> None:
        """Forget cached text features (after the classes or the trainable set change)."""
        self._cache = None
        self._cached = []
        self._prefix.clear()

    def train(self, mode: bool = True):
        # entering or leaving training changes which prompts count as frozen
        self.invalidate()
        return super().train(mode)

    def encode(self, classes: list[int], original: bool = False) -> torch.Tensor:
        """Text features (not normalised) of ``classes``, with gradients where parameters train.

        ``original=True`` uses CLIP's own name embeddings instead of the label vectors (t0).
        """
        if not classes:
            return torch.empty(0, self.clip.embed_dim, device=self.clip.device)
        table = None
        if self.labels is not None:
            table = self.labels.originals(classes) if original else self.labels.as_mapping(classes)
        return self.encoder.encode(classes, context=self.context, labels=table, prefix=self.prefix_state())

    def prefix_state(self) -> Optional[PrefixState]:
        """The shared prefix's state for an encoding now, or None on the full-prompt path.

        While the context trains (and gradients are on), it is made once per step, by the step's
        forward, with gradient into the context, and reused by t0 in the same step. Otherwise it is a
        constant -- the template's frozen words (LAMM), or a context that does not train now -- made
        without gradient once, and again only when the context's value differs (a step, a checkpoint).
        """
        if not self.shared_prefix:
            return None
        trains = self._context_trains() and torch.is_grad_enabled()
        return self._prefix.get(version_key([self.context]), trains, lambda: self.encoder.prefix_state(self.context))

    def text_features(self) -> torch.Tensor:
        """Normalised t of every known class ``[C, D]``, rows in ``self.classes`` order."""
        trainable = set(self._trainable_classes()) if self.training else set()
        frozen = [c for c in self.classes if c not in trainable]
        if self._cache is None or frozen != self._cached:
            with torch.no_grad():
                self._cache = normalize(self.encode(frozen))
            self._cached = frozen
        if not trainable:
            return self._cache
        live = [c for c in self.classes if c in trainable]
        t_live = normalize(self.encode(live))
        rows = {c: i for i, c in enumerate(frozen)}
        out = []
        li = 0
        for c in self.classes:  # reassemble in class order
            if c in trainable:
                out.append(t_live[li])
                li += 1
            else:
                out.append(self._cache[rows[c]])
        return torch.stack(out)

    def original_text_features(self, classes: list[int]) -> torch.Tensor:
        """Normalised t0 of ``classes``: the same prompts with CLIP's own name embeddings.

        While the shared context trains, t0 is encoded afresh from the *current* context on every
        call and keeps its gradient into the context, as the reference's ``_get_origin_feature``
        runs ``forward_test`` (the trainable ``ctx`` with the original name embeddings) without
        ``no_grad`` (gaojingsheng/LAMM trainers/coop.py, CustomCLIP): the logits term then moves
        the context, and only the feature term detaches t0 (:func:`lamm_cl.losses.feature_loss`).
        Where nothing on the prompt trains, t0 is a constant and is cached per class; the cache
        remembers the context it was made with and is dropped as soon as the context differs
        (a step, a checkpoint load), so it is never stale.
        """
        if self._context_trains():
            return normalize(self.encode(classes, original=True))
        if self.context is not None:
            made_with = self._original_context
            if made_with is None or made_with.shape != self.context.shape \
                    or not torch.equal(made_with, self.context.detach()):
                self._original = {}
                self._original_context = self.context.detach().clone()
        missing = [c for c in classes if c not in self._original]
        if missing:
            with torch.no_grad():
                for c, t in zip(missing, normalize(self.encode(missing, original=True))):
                    self._original[c] = t
        return torch.stack([self._original[c] for c in classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of image features ``x`` over every known class (columns = ``self.classes``)."""
        self._prefix.new_step()  # the context's prefix is encoded afresh, once per step
        t = self.text_features()
        self.last_text = t
        f = normalize(x.to(t.dtype))
        return self.logit_scale * f @ t.t()
