"""LAMM's growing label-embedding table (an Avalanche DynamicModule).

Every class owns k trainable vectors of the token-embedding width that stand in
for the first k BPE pieces of its name. At each training experience the table
appends vectors for the experience's new classes and freezes every earlier
class's vectors, so an old class's prompt -- and its text feature -- never
changes again.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from avalanche.models import DynamicModule

from lamm_cl.model.prompts import ClassPrompts

LabelTokens = Union[str, int]  # "min" | "min_experience" | "all" | int


def label_token_counts(prompts: ClassPrompts, label_tokens: LabelTokens,
                       experiences: Optional[Sequence[Sequence[int]]] = None) -> list[int]:
    """k per class.

    ``min``: the shortest name length in the benchmark, for every class (what the
    LAMM reference code does); ``min_experience``: the shortest name length among
    the classes of the experience that adds the class (the reference's base and
    new runs each take their own minimum; needs ``experiences``); ``all``: every
    piece of each name; an int k: k pieces, or the whole name when it is shorter.

    Raises:
        ValueError: an unknown ``label_tokens``, or ``min_experience`` without
            experiences that cover every class once.
    """
    lengths = [len(n) for n in prompts.name_ids]
    if label_tokens == "min":
        return [min(lengths)] * len(lengths)
    if label_tokens == "min_experience":
        if experiences is None:
            raise ValueError("label_tokens 'min_experience' needs the classes of each experience")
        k: list[Optional[int]] = [None] * len(lengths)
        for group in experiences:
            shortest = min(lengths[int(c)] for c in group) if len(group) else 0
            for c in group:
                k[int(c)] = shortest
        if any(v is None for v in k):
            raise ValueError("label_tokens 'min_experience': some classes belong to no experience")
        return [int(v) for v in k]
    if label_tokens == "all":
        return lengths
    if isinstance(label_tokens, int) and not isinstance(label_tokens, bool) and label_tokens >= 1:
        return [min(label_tokens, n) for n in lengths]
    raise ValueError(f"label_tokens must be 'min', 'min_experience', 'all' or a positive int, got {label_tokens!r}")


class LabelTable(DynamicModule):
    """Per-class label vectors M_c with frozen copies M0_c of CLIP's name embeddings
    (and, with ``label_init: random``, of each random start: the parameter loss's anchor).

    Args:
        word_embedding: CLIP's token-embedding table ``[V, W]`` (read, never trained).
        prompts: the benchmark's per-class token layout.
        label_tokens: ``"min"``, ``"min_experience"``, ``"all"`` or an int (see
            :func:`label_token_counts`); with ``min_experience`` each class's k is fixed when
            :meth:`add_classes` adds it, from the classes added with it.
        label_init: ``"name"`` (the name's own embeddings) or ``"random"`` (N(0, 0.02^2)).
    """

    def __init__(self, word_embedding: torch.Tensor, prompts: ClassPrompts,
                 label_tokens: LabelTokens = "min", label_init: str = "name"):
        super().__init__()
        if label_init not in ("name", "random"):
            raise ValueError(f"label_init must be 'name' or 'random', got {label_init!r}")
        self.label_tokens = label_tokens
        if label_tokens == "min_experience":
            # Known only once the experience that adds a class is known: see add_classes.
            self.k: list[Optional[int]] = [None] * len(prompts.name_ids)
        else:
            self.k = label_token_counts(prompts, label_tokens)
        self.label_init = label_init
        self._prompts = prompts
        self._words = word_embedding.detach()
        self.vectors = nn.ParameterDict()
        self.classes: list[int] = []  # in the order they were added
        self.trainable: list[int] = []  # the classes of the experience being trained

    def original(self, c: int) -> torch.Tensor:
        """M0_c: CLIP's embeddings of the first k pieces of class c's name (what t0 is encoded with)."""
        return getattr(self, f"m0_{c}")

    def anchor(self, c: int) -> torch.Tensor:
        """What the parameter loss pulls class c's vectors towards: their starting value.

        With ``label_init: name`` that is M0_c. With ``random`` it is the random start, as in the
        reference, whose ``fix_token`` is deep-copied from ``token_classes`` after ``normal_``
        (gaojingsheng/LAMM trainers/coop.py, PromptLearner._get_token_classes), while t0 keeps
        the real name embeddings (``forward_test``'s ``token_suffix_test``).
        """
        if self.label_init == "random":
            return getattr(self, f"start_{c}")
        return self.original(c)

    def add_classes(self, new: Sequence[int]) -> None:
        """Append vectors for ``new`` classes and freeze every class added before."""
        for p in self.vectors.values():
            p.requires_grad_(False)
        self.trainable = []
        fresh = sorted(int(c) for c in new if str(int(c)) not in self.vectors)
        if self.label_tokens == "min_experience" and fresh:
            shortest = min(len(self._prompts.name_ids[c]) for c in fresh)
            for c in fresh:
                self.k[c] = shortest
        for c in fresh:
            ids = torch.tensor(self._prompts.name_ids[c][: self.k[c]])
            m0 = self._words[ids].clone()
            self.register_buffer(f"m0_{c}", m0)
            if self.label_init == "name":
                init = m0.clone()
            else:
                init = torch.randn_like(m0) * 0.02
                # a buffer only for random starts, so that name-initialised tables keep their state_dict
                self.register_buffer(f"start_{c}", init.clone())
            self.vectors[str(c)] = nn.Parameter(init)
            self.classes.append(c)
            self.trainable.append(c)

    def adaptation(self, experience) -> None:
        """Avalanche hook: grow by the experience's classes that are not in the table yet.

        Evaluation on classes already here changes nothing (no freezing, no growth).
        """
        new = [c for c in experience.classes_in_this_experience if str(int(c)) not in self.vectors]
        if new:
            self.add_classes(new)

    def as_mapping(self, classes: Sequence[int]) -> dict[int, torch.Tensor]:
        """class -> its current vectors, for :meth:`PromptEncoder.encode`."""
        return {int(c): self.vectors[str(int(c))] for c in classes}

    def originals(self, classes: Sequence[int]) -> dict[int, torch.Tensor]:
        """class -> M0_c, for encoding the prompts with CLIP's own name embeddings."""
        return {int(c): self.original(int(c)) for c in classes}

    def forward(self, *args, **kwargs):  # pragma: no cover - a table, not a layer
        raise TypeError("LabelTable is read through as_mapping(); it has no forward")
