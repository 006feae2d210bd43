"""Prompts as token layouts, and the text encoder run on them with vectors spliced in.

Every class's prompt is ``[SOS] prefix name suffix [EOT]``: the template split
around ``{}``. Strategies replace the prefix with a shared context (CoOp) and/or
the first k name pieces with per-class label vectors (LAMM); everything else
stays CLIP's own frozen word embeddings. ``[SOS] prefix`` is the same in every
class's prompt: :class:`PromptEncoder` can run it once and the rest of each
prompt after it (:mod:`lamm_cl.model.shared_prefix`).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.model.shared_prefix import PrefixState, encode_prefix, encode_rest, unfit_reason


class ClassPrompts:
    """Token layout of one prompt per class.

    Args:
        clip: the frozen CLIP whose tokenizer is used.
        class_names: names indexed by label.
        template: a prompt with one ``{}`` for the name, e.g. ``"a photo of a {}."``.

    Attributes:
        ids: int64 ``[C, L]`` token ids (zero-padded), L = longest prompt incl. EOT.
        eot: int64 ``[C]`` EOT position per class.
        prefix_len: number of template tokens before the name (same for every class).
        name_ids: BPE ids of each class name.
    """

    def __init__(self, clip: FrozenCLIP, class_names: Sequence[str], template: str):
        if template.count("{}") != 1:
            raise ValueError(f"template must contain exactly one '{{}}': {template!r}")
        head, tail = template.split("{}")
        self.template = template
        self.prefix_ids = clip.token_ids(head.strip()) if head.strip() else []
        self.prefix_len = len(self.prefix_ids)
        self.name_ids = [clip.token_ids(name) for name in class_names]
        suffix_ids = clip.token_ids(tail.strip()) if tail.strip() else []
        context = int(clip.model.positional_embedding.shape[0])
        rows = []
        for c, name in enumerate(self.name_ids):
            if not name:
                raise ValueError(f"class {c} has an empty name")
            rows.append([clip.sos_id, *self.prefix_ids, *name, *suffix_ids, clip.eot_id])
        longest = max(len(r) for r in rows)
        if longest > context:
            raise ValueError(f"a prompt is {longest} tokens, longer than CLIP's context of {context}")
        self.ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for c, r in enumerate(rows):
            self.ids[c, : len(r)] = torch.tensor(r)
        self.eot = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        self.name_start = 1 + self.prefix_len

    def __len__(self) -> int:
        return len(self.name_ids)


class PromptEncoder:
    """Encodes class prompts through CLIP's frozen text tower, with trainable pieces spliced in.

    Args:
        clip: the frozen CLIP.
        prompts: the per-class token layout.

    Attributes:
        unfit: why the tower cannot run the shared prefix (:func:`~lamm_cl.model.shared_prefix.unfit_reason`),
            None when it can.
    """

    def __init__(self, clip: FrozenCLIP, prompts: ClassPrompts):
        self.clip = clip
        self.prompts = prompts
        self.unfit = unfit_reason(clip.model)

    @property
    def prefix_length(self) -> int:
        """Tokens every prompt shares: SOS and the template prefix (or the context in its place)."""
        return self.prompts.name_start

    def word_embeddings(self, classes: Sequence[int], start: int = 0) -> torch.Tensor:
        """CLIP's own token embeddings of the classes' prompts from position ``start``, cut after their
        longest EOT."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        length = int(self.prompts.eot[idx].max()) + 1
        return self.clip.embed_tokens(self.prompts.ids[idx, start:length])

    def _check_context(self, context: torch.Tensor) -> None:
        if context.shape[0] != self.prompts.prefix_len:
            raise ValueError(f"context has {context.shape[0]} vectors, the template prefix "
                             f"{self.prompts.prefix_len} tokens")

    def prefix_state(self, context: Optional[torch.Tensor] = None) -> PrefixState:
        """The shared prefix ``[SOS] prefix`` (or ``[SOS] context``) run once through the text tower.

        Gradients flow into ``context`` unless called under ``torch.no_grad``.
        """
        if self.unfit is not None:
            raise ValueError(f"the shared prefix cannot run on this text tower: {self.unfit}")
        emb = self.clip.embed_tokens(self.prompts.ids[0, : self.prefix_length])
        if context is not None:
            self._check_context(context)
            emb = torch.cat([emb[:1], context.to(emb.dtype)])
        return encode_prefix(self.clip.model, emb)

    def encode(
        self,
        classes: Sequence[int],
        context: Optional[torch.Tensor] = None,
        labels: Optional[Mapping[int, torch.Tensor]] = None,
        prefix: Optional[PrefixState] = None,
    ) -> torch.Tensor:
        """Text features ``[len(classes), D]`` (not normalised).

        Args:
            classes: labels to encode.
            context: ``[prefix_len, W]`` vectors replacing the template prefix of every prompt.
            labels: class -> ``[k, W]`` vectors replacing the first k pieces of that class's name
                (classes missing from the mapping keep their words).
            prefix: the shared prefix from :meth:`prefix_state`, made with this same ``context``: only
                the tokens after it are run here. None: every prompt runs whole (the full path).
        """
        classes = [int(c) for c in classes]
        eot = self.prompts.eot[torch.as_tensor(classes, dtype=torch.long)]
        if prefix is not None:
            emb = self.word_embeddings(classes, start=prefix.length)
            emb = self._splice_labels(emb, classes, labels, self.prompts.name_start - prefix.length)
            return encode_rest(self.clip.model, prefix, emb, eot)
        emb = self.word_embeddings(classes)
        if context is not None:
            self._check_context(context)
            start = 1
            ctx = context.to(emb.dtype).unsqueeze(0).expand(len(classes), -1, -1)
            emb = torch.cat([emb[:, :start], ctx, emb[:, start + context.shape[0]:]], dim=1)
        emb = self._splice_labels(emb, classes, labels, self.prompts.name_start)
        return self.clip.encode_text_embeddings(emb, eot)

    @staticmethod
    def _splice_labels(emb: torch.Tensor, classes: list[int], labels: Optional[Mapping[int, torch.Tensor]],
                       s: int) -> torch.Tensor:
        """``emb`` with each class's label vectors from position ``s`` of its row."""
        if not labels:
            return emb
        spliced = emb.new_zeros(emb.shape)
        mask = torch.zeros(emb.shape[:2], dtype=torch.bool, device=emb.device)
        for row, c in enumerate(classes):
            vec = labels.get(c)
            if vec is not None:
                spliced[row, s : s + vec.shape[0]] = vec.to(emb.dtype)
                mask[row, s : s + vec.shape[0]] = True
        return torch.where(mask.unsqueeze(-1), spliced, emb)
