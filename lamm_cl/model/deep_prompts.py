"""MaPLe's deep multi-modal prompts (Khattak et al., CVPR 2023), injected into open_clip's frozen towers.

Where the prompts go, as MaPLe's own code places them (muzairkhattak/multimodal-prompt-learning at
904dbd7: ``trainers/maple.py`` ``MultiModalPromptLearner`` and ``clip/model.py``
``ResidualAttentionBlock_MaPLe`` / ``VisionTransformer_MaPLe``; line numbers below are of that copy):

* depth: ``PROMPT_DEPTH`` counts the input layer. Depth 9 (the config's value) is the context at
  the input plus prompts before blocks 1 .. 8; depth 1 is the input context alone
  (trainers/maple.py:111-117 make ``depth - 1`` deeper prompts and projections;
  ``ResidualAttentionBlock_MaPLe.forward`` skips block 0 and uses ``compound_prompts_deeper[counter]``
  before blocks 1, 2, ... while ``counter`` is below their number);
* text, layer 0: the ``n_ctx`` context vectors take the token positions ``1 .. n_ctx`` of the prompt
  (right after SOS) and get the positional embedding like any token (trainers/maple.py:130-131
  ``token_prefix`` / ``token_suffix = embedding[:, 1 + n_ctx:]``, 148-155, ``TextEncoder.forward``:53);
* text, layer j = 1 .. depth-1: before block j the residual stream at positions ``1 .. n_ctx`` is
  *replaced* by the layer's own prompt (no positional embedding) (``ResidualAttentionBlock_MaPLe``,
  text branch: ``prefix = x[:1]``, ``suffix = x[1 + n_ctx:]``);
* vision, layer 0: ``coupling_0(context)`` is appended as ``n_ctx`` extra tokens after the class
  token and the patches, after the positional embedding and before ``ln_pre``
  (``VisionTransformer_MaPLe.forward``; ``shared_ctx = self.proj(self.ctx)``, trainers/maple.py:176);
* vision, layer j = 1 .. depth-1: before block j the last ``n_ctx`` tokens are replaced by
  ``coupling_j(text prompt of layer j)`` (``ResidualAttentionBlock_MaPLe``, vision branch:
  ``prefix = x[0 : L - n_ctx]``; trainers/maple.py:171-173);
* blocks from ``depth`` on see whatever the previous block made of the prompt tokens; the image
  feature is the class token's (``x[:, 0]`` then ``ln_post``), so the prompt tokens never reach it.

Deliberate deviations (none changes a number on CLIP's ViTs in fp32):

* widths: the reference hard-codes 512 (text prompts) and ``Linear(ctx_dim, 768)`` (couplings,
  trainers/maple.py:103, 111, 116), ViT-B's widths; here they are the towers' own widths, so any
  open_clip ViT works;
* the prompt tokens are dropped before open_clip's pooling: identical for class-token pooling (every
  CLIP ViT), and for an ``avg``-pooled tower the mean covers the image tokens only;
* precision: the reference runs CLIP in fp16 (``PREC: "fp16"``, configs/trainers/MaPLe/
  vit_b16_c2_ep5_batch4_2ctx.yaml:35), with ``self.proj.half()`` (trainers/maple.py:104) and every
  deeper prompt cast ``.half()`` before it enters a block, the ``ctx`` parameter itself fp16 and
  the deeper prompts and their projections fp32. By default (``model.precision: bf16-autocast``)
  every parameter is fp32 and on CUDA training runs under bf16 autocast, evaluation under its
  autocast, as for the other strategies; ``model.precision: fp16`` holds CLIP, the context and the
  first coupling in fp16 and the deeper prompts and couplings in fp32, as the reference does.

The encoders are open_clip's own modules, run block by block; nothing of them is copied or changed.
The text side's prompt prefix -- SOS, the context and the template words after it, with the deep
prompts that replace the context at each layer -- is the same for every class: where the tower fits,
it is run once and every class's own tokens attend to it (:mod:`lamm_cl.model.shared_prefix`).
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from avalanche.models import DynamicModule

from lamm_cl.errors import ConfigError
from lamm_cl.model.clip import FrozenCLIP, normalize
from lamm_cl.model.prompts import ClassPrompts
from lamm_cl.model.shared_prefix import (PrefixCache, PrefixState, describe, encode_prefix, encode_rest,
                                         unfit_reason, version_key)

logger = logging.getLogger(__name__)

CONTEXT_START = 1  # the context follows SOS


# ---------------------------------------------------------------------------
# running open_clip's towers with prompts injected
# ---------------------------------------------------------------------------

def _blocks(transformer: nn.Module) -> nn.ModuleList:
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise ConfigError(f"deep prompts need an open_clip transformer with resblocks, got {type(transformer).__name__}")
    return blocks


def prompt_depth_limit(clip: FrozenCLIP) -> int:
    """The deepest prompt depth ``clip`` allows: the smaller of its text and vision block counts.

    Raises:
        ConfigError: the image encoder is not a ViT (deep vision prompts need transformer blocks).
    """
    visual = clip.model.visual
    if not hasattr(visual, "_embeds") or not hasattr(visual, "transformer"):
        raise ConfigError(f"model.arch: {clip.arch} has a {type(visual).__name__} image encoder; MaPLe's vision "
                          "prompts need a ViT (e.g. ViT-B-16 or lamm-tiny)")
    return min(len(_blocks(clip.model.transformer)), len(_blocks(visual.transformer)))


def run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor],
               before_block: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run an open_clip ``Transformer`` block by block on ``x`` ``[N, L, W]`` (batch first).

    ``before_block(i, x)`` may rewrite the batch-first stream before block ``i``. A transformer built
    with ``batch_first=False`` gets its blocks fed sequence-first, as its own ``forward`` would.
    """
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(_blocks(transformer)):
        x = before_block(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def _replace(x: torch.Tensor, start: int, prompt: torch.Tensor) -> torch.Tensor:
    """``x`` with positions ``start .. start+n`` of every row replaced by ``prompt`` ``[n, W]``."""
    stop = start + prompt.shape[0]
    p = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], p, x[:, stop:]], dim=1)


def encode_text_deep(clip: FrozenCLIP, emb: torch.Tensor, eot: torch.Tensor,
                     deep: Sequence[torch.Tensor], start: int = CONTEXT_START) -> torch.Tensor:
    """CLIP's text tower on token embeddings, with deep prompts replacing positions ``start ..`` before
    blocks ``1 .. len(deep)``.

    Args:
        emb: ``[N, L, W]`` token embeddings, the input context already in place (cut after the longest EOT).
        eot: ``[N]`` EOT position of each row.
        deep: the prompts ``[n_ctx, W]`` of layers 1, 2, ... (layer 0's is the context inside ``emb``).
    Returns:
        ``[N, D]`` text features, not normalised.
    """
    m = clip.model
    length = emb.shape[1]
    x = emb + m.positional_embedding[:length].to(emb.dtype)
    mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None

    def inject(i: int, x: torch.Tensor) -> torch.Tensor:
        return _replace(x, start, deep[i - 1]) if 1 <= i <= len(deep) else x

    x = run_blocks(m.transformer, x, mask, inject)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
    proj = m.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def encode_image_deep(clip: FrozenCLIP, images: torch.Tensor, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
    """CLIP's image tower with vision prompts: ``prompts[0]`` appended as extra tokens, ``prompts[j]``
    replacing them before block j.

    The prompt tokens are dropped before pooling, so a pooling over all tokens (``avg``) sees the
    image tokens only, as the class-token pooling of CLIP's ViTs always does. With no prompts this
    is the tower's own forward.

    Args:
        images: preprocessed ``[N, 3, H, W]``.
        prompts: ``[n_ctx, vision width]`` per layer 0, 1, ... (all of the same ``n_ctx``).
    Returns:
        ``[N, D]`` image features, not normalised.
    """
    v = clip.model.visual
    x = v._embeds(images.to(clip.device, clip.dtype))  # patches + class token + positions, then ln_pre
    n = prompts[0].shape[0] if prompts else 0
    if n:
        # MaPLe appends the prompt before ln_pre; a LayerNorm acts on each token alone, so
        # normalising the prompt apart and appending it after gives the same stream.
        x = torch.cat([x, v.ln_pre(prompts[0].to(x.dtype)).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)

    def inject(i: int, x: torch.Tensor) -> torch.Tensor:
        return _replace(x, x.shape[1] - n, prompts[i]) if 1 <= i < len(prompts) else x

    x = run_blocks(v.transformer, x, None, inject)
    if n:
        x = x[:, : x.shape[1] - n]
    pooled, _ = v._pool(x)
    return pooled @ v.proj if v.proj is not None else pooled


# ---------------------------------------------------------------------------
# the trainable prompts
# ---------------------------------------------------------------------------

class MultiModalPrompts(nn.Module):
    """MaPLe's trainable pieces: the input context, the text prompts of the deeper layers, and one
    coupling ``Linear(text width -> vision width)`` per layer that makes that layer's vision prompt.

    Args:
        context: ``[n_ctx, text width]`` the initial input context (layer 0's text prompt).
        depth: layers that get prompts (1: the input only).
        vision_width: width of the image tower's tokens.

    Attributes:
        context: layer 0's text prompt.
        text_deep: the text prompts of layers ``1 .. depth-1``, each N(0, 0.02^2) at the start.
        couplings: ``depth`` linear maps; ``couplings[j]`` turns layer j's text prompt into its vision prompt.
    """

    def __init__(self, context: torch.Tensor, depth: int, vision_width: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"prompt depth must be 1 or more, got {depth}")
        n_ctx, width = context.shape
        self.context = nn.Parameter(context.detach().clone())
        # text prompts of the deeper layers: N(0, 0.02^2), as trainers/maple.py:111-114
        self.text_deep = nn.ParameterList(
            [nn.Parameter(torch.randn(n_ctx, width, device=context.device) * 0.02) for _ in range(depth - 1)])
        first = nn.Linear(width, vision_width, device=context.device)  # self.proj, trainers/maple.py:103
        first.to(context.dtype)  # fp16 with an fp16 context (model.precision fp16): `self.proj.half()`, :104
        # MaPLe clones one Linear for every deeper layer, so they all start equal (trainers/maple.py:116-117
        # `_get_clones(single_layer, depth - 1)`, a deepcopy each, :207-208); the input's has its own draw.
        # PyTorch's default Linear init in both, as the reference.
        deeper = nn.Linear(width, vision_width, device=context.device)
        self.couplings = nn.ModuleList([first, *(copy.deepcopy(deeper) for _ in range(depth - 1))])

    @property
    def depth(self) -> int:
        return len(self.couplings)

    @property
    def n_ctx(self) -> int:
        return int(self.context.shape[0])

    def text_prompts(self) -> list[torch.Tensor]:
        """Layer 0's context, then the deeper text prompts."""
        return [self.context, *self.text_deep]

    def vision_prompts(self) -> list[torch.Tensor]:
        """Each layer's vision prompt: its coupling applied to its text prompt."""
        return [c(p) for c, p in zip(self.couplings, self.text_prompts())]

    def text_trains(self) -> bool:
        """Whether any text prompt (so every class's text feature) can change in this step."""
        return any(p.requires_grad for p in self.text_prompts())


# ---------------------------------------------------------------------------
# the classifier
# ---------------------------------------------------------------------------

LABEL_SLOTS = ("name", "reference")


class MapleClassifier(DynamicModule):
    """Logits of images over every seen class, both towers prompted by a :class:`MultiModalPrompts`.

    Args:
        clip: the frozen CLIP (held by reference, outside the module's parameters and state).
        prompts: per-class token layout; its template prefix must be at least ``n_ctx`` tokens,
            of which the first ``n_ctx`` are the context's positions.
        learner: the trainable prompts and couplings.
        labels: LAMM's label table, or None to keep the class names as words.
        label_slot: where label vectors go: ``name`` -- in place of the name's first k pieces (LAMM's
            layout); ``reference`` -- one vector in the token right after the context, the whole name
            kept (LAMM's ``trainers/maple.py``: ``token_suffix = embedding[:, 1 + 1 + n_ctx:]``).

    Attributes:
        keep_original: also encode t0 (the prompts with the words, no label vectors) in training,
            with gradient, in the same text pass; read it from ``last_original``.
        last_image, last_text, last_original: normalised image features of the last batch and
            text features of every class (rows in ``classes`` order) from the last forward.
        shared_prefix: run the text prompts' shared prefix once (True where the text tower fits, see
            :func:`~lamm_cl.model.shared_prefix.unfit_reason`); False runs every prompt whole.
    """

    def __init__(self, clip: FrozenCLIP, prompts: ClassPrompts, learner: MultiModalPrompts,
                 labels: Optional[nn.Module] = None, label_slot: str = "name"):
        super().__init__()
        if label_slot not in LABEL_SLOTS:
            raise ValueError(f"label_slot must be one of {LABEL_SLOTS}, got {label_slot!r}")
        if prompts.prefix_len < learner.n_ctx:
            raise ValueError(f"the template prefix has {prompts.prefix_len} tokens, fewer than n_ctx {learner.n_ctx}")
        self._clip = [clip]  # a list hides it from nn.Module's registry (no .to(), no state_dict)
        self.prompts = prompts
        self.learner = learner
        self.labels = labels
        self.label_slot = label_slot
        self.keep_original = False
        self.classes: list[int] = []
        self._frozen_text: dict[int, torch.Tensor] = {}  # class -> t, while nothing on its text side trains
        self._frozen_original: dict[int, torch.Tensor] = {}  # class -> t0, likewise
        self.last_image: Optional[torch.Tensor] = None
        self.last_text: Optional[torch.Tensor] = None
        self.last_original: Optional[torch.Tensor] = None
        unfit = unfit_reason(clip.model)
        self.shared_prefix = unfit is None
        self._prefix = PrefixCache()
        logger.info(describe(unfit))

    @property
    def clip(self) -> FrozenCLIP:
        return self._clip[0]

    @property
    def logit_scale(self) -> float:
        # CLIP's exp(logit_scale), frozen: trainers/maple.py:191 ``logit_scale = self.logit_scale.exp()``
        return self.clip.logit_scale

    def adaptation(self, experience) -> None:
        """Avalanche hook: add the experience's unseen classes (a label table grows on its own)."""
        new = [int(c) for c in sorted(experience.classes_in_this_experience) if int(c) not in self.classes]
        if new:
            self.classes.extend(new)
            self.invalidate()

    def invalidate(self) -> None:
        """Forget cached text features."""
        self._frozen_text = {}
        self._frozen_original = {}
        self._prefix.clear()

    def train(self, mode: bool = True):
        # entering or leaving training changes which prompts may move
        self.invalidate()
        return super().train(mode)

    # -- text ----------------------------------------------------------------
    def label_positions(self, c: int, k: int) -> tuple[int, int]:
        """Token positions ``[start, stop)`` of class ``c``'s ``k`` label vectors in its prompt."""
        start = self.prompts.name_start if self.label_slot == "name" else CONTEXT_START + self.learner.n_ctx
        return start, start + k

    def prompt_embeddings(self, classes: Sequence[int], labels: Optional[Mapping[int, torch.Tensor]] = None):
        """The text tower's input ``([N, L, W], eot [N])``: CLIP's word embeddings with the context in
        positions ``1 .. n_ctx`` and, where given, each class's label vectors in its slot."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        eot = self.prompts.eot[idx]
        emb = self.clip.embed_tokens(self.prompts.ids[idx, : int(eot.max()) + 1])
        emb = _replace(emb, CONTEXT_START, self.learner.context)
        if labels:
            rows = []
            for row, c in zip(emb, classes):
                vec = labels.get(int(c))
                if vec is not None:
                    start, stop = self.label_positions(int(c), vec.shape[0])
                    row = torch.cat([row[:start], vec.to(row.dtype), row[stop:]])
                rows.append(row)
            emb = torch.stack(rows)
        return emb, eot

    @property
    def prefix_length(self) -> int:
        """Tokens every class's prompt shares: SOS, the context, and the template words up to the first
        label vector's slot (the name, or right after the context in the ``reference`` slot)."""
        if self.label_slot == "reference" and self.labels is not None:
            return CONTEXT_START + self.learner.n_ctx
        return self.prompts.name_start

    def prefix_state(self) -> Optional[PrefixState]:
        """The shared prefix's state for an encoding now, or None on the full-prompt path: made once per
        step with gradient while the text prompts train, otherwise once until they change."""
        if not self.shared_prefix:
            return None
        prompts = self.learner.text_prompts()
        trains = self.learner.text_trains() and torch.is_grad_enabled()
        return self._prefix.get(version_key(prompts), trains, self._make_prefix)

    def _make_prefix(self) -> PrefixState:
        emb = self.clip.embed_tokens(self.prompts.ids[0, : self.prefix_length])
        emb = _replace(emb.unsqueeze(0), CONTEXT_START, self.learner.context)[0]
        return encode_prefix(self.clip.model, emb, list(self.learner.text_deep), CONTEXT_START)

    def rest_embeddings(self, classes: Sequence[int], labels: Optional[Mapping[int, torch.Tensor]],
                        start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prompt_embeddings` from position ``start`` on (the tokens after the shared prefix)."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        eot = self.prompts.eot[idx]
        emb = self.clip.embed_tokens(self.prompts.ids[idx, start: int(eot.max()) + 1])
        if labels:
            rows = []
            for row, c in zip(emb, classes):
                vec = labels.get(int(c))
                if vec is not None:
                    first, stop = self.label_positions(int(c), vec.shape[0])
                    row = torch.cat([row[: first - start], vec.to(row.dtype), row[stop - start:]])
                rows.append(row)
            emb = torch.stack(rows)
        return emb, eot

    def _encode_tables(self, classes: list[int], tables: list[Optional[Mapping[int, torch.Tensor]]]) -> torch.Tensor:
        """Text features ``[len(tables) * N, D]`` (not normalised) of ``classes`` once per label table,
        in one pass through the text tower."""
        state = self.prefix_state()
        start = state.length if state is not None else 0
        embs, eots = zip(*[self.rest_embeddings(classes, table, start) if state is not None
                           else self.prompt_embeddings(classes, table) for table in tables])
        length = max(e.shape[1] for e in embs)
        emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embs])
        if state is not None:
            return encode_rest(self.clip.model, state, emb, torch.cat(eots))
        return encode_text_deep(self.clip, emb, torch.cat(eots), list(self.learner.text_deep))

    def encode_text(self, classes: Sequence[int], original: bool = False) -> torch.Tensor:
        """Text features ``[N, D]`` (not normalised) of ``classes``; ``original`` leaves the label vectors out."""
        table = None if original or self.labels is None else self.labels.as_mapping(classes)
        return self._encode_tables(list(classes), [table])

    def _encode_both(self, classes: list[int], original: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Normalised t (and t0 when ``original``) of ``classes`` in one pass through the text tower."""
        if not classes:
            return torch.empty(0, self.clip.embed_dim, device=self.clip.device), None
        if not original:
            return normalize(self.encode_text(classes)), None
        table = self.labels.as_mapping(classes) if self.labels is not None else None
        both = normalize(self._encode_tables(classes, [table, None]))
        return both[: len(classes)], both[len(classes):]

    def text_features(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Normalised t of every known class ``[C, D]`` (and t0 when ``keep_original`` in training).

        While the shared prompts train, every class's prompt changes: all are encoded, once per step.
        Otherwise only the classes whose label vectors train are; the rest are encoded once and kept.
        """
        original = self.keep_original and self.training
        if not self.classes:  # no class yet: no columns (as PromptClassifier), in training and evaluation
            empty = torch.empty(0, self.clip.embed_dim, device=self.clip.device)
            return empty, (empty if original else None)
        if self.training and self.learner.text_trains():
            return self._encode_both(list(self.classes), original)
        live = set()
        if self.training and self.labels is not None:
            live = {c for c in self.labels.trainable if self.labels.vectors[str(c)].requires_grad}
        frozen = [c for c in self.classes if c not in live and c not in self._frozen_text]
        if frozen:
            with torch.no_grad():
                t, t0 = self._encode_both(frozen, original)
            self._frozen_text.update(zip(frozen, t))
            if t0 is not None:
                self._frozen_original.update(zip(frozen, t0))
        if original:
            todo = [c for c in self.classes if c not in self._frozen_original]
            if todo:  # t0 of the live classes is a constant too: no label vectors in it, nothing shared trains
                with torch.no_grad():
                    self._frozen_original.update(zip(todo, normalize(self.encode_text(todo, original=True))))
        live_classes = [c for c in self.classes if c in live]
        t_live = dict(zip(live_classes, self._encode_both(live_classes, False)[0]))
        t = torch.stack([t_live[c] if c in t_live else self._frozen_text[c] for c in self.classes])
        t0 = torch.stack([self._frozen_original[c] for c in self.classes]) if original else None
        return t, t0

    # -- images --------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``[B, D]`` with the current vision prompts."""
        return normalize(encode_image_deep(self.clip, images, self.learner.vision_prompts()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of ``images`` over every known class (columns = ``self.classes``)."""
        self._prefix.new_step()  # the prompts' prefix is encoded afresh, once per step
        t, t0 = self.text_features()
        f = self.image_features(images).to(t.dtype)
        self.last_image, self.last_text, self.last_original = f, t, t0
        return self.logit_scale * f @ t.t()  # both normalised, as trainers/maple.py:197-199
