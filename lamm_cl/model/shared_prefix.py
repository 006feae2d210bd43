"""The text tower run once on the prompt prefix every class shares, then on each class's own tokens.

CLIP's text mask is causal, so the tokens before the class name -- ``[SOS] a photo of a`` (LAMM),
``[SOS] ctx_1 .. ctx_n`` (CoOp, CoOp+LAMM, MaPLe's text side with its deep prompts) -- have the same
hidden states in every class's prompt. :func:`encode_prefix` runs them once, as a batch of one, and
keeps each block's keys and values; :func:`encode_rest` runs every class's remaining tokens through
the same blocks, their queries attending to the prefix's keys and values (broadcast over the classes,
never copied) and to their own tokens causally. Only the blocks' own weights are used (``ln_1``,
``attn.in_proj_*``, ``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``, open_clip's
``ResidualAttentionBlock``): the features agree with the full-prompt path up to float rounding.

A tower that does not fit -- no causal mask, another block or attention type, gradient checkpointing --
is reported by :func:`unfit_reason`; callers then run today's full-prompt path, and
:func:`text_path_log` puts the path that ran in a run's log.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PrefixState:
    """What every class's remaining tokens need of the shared prefix: each block's keys and values.

    Attributes:
        keys, values: per block ``[heads, p, head width]`` (a batch of one, squeezed).
        length: p, the prefix's tokens (SOS included).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


class PrefixCache:
    """A classifier's shared-prefix state, kept while it stays valid.

    ``key`` names what the prefix was made from (each trainable prompt's identity and version, which
    an optimiser step or a checkpoint load bumps). A prefix that trains is made with gradient at most
    once per step (:meth:`new_step` starts one: a classifier's forward) and reused by t0 in the same
    step; a frozen one is made without gradient and kept until its key changes or :meth:`clear`.
    Derived data: a copy (an LwF teacher) or an unpickled checkpoint starts empty and remakes it.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.frozen: Optional[PrefixState] = None
        self.frozen_key: object = None
        self.new_step()

    def new_step(self) -> None:
        self.step: Optional[PrefixState] = None
        self.step_key: object = None

    def get(self, key: object, trains: bool, make: Callable[[], PrefixState]) -> PrefixState:
        """The state for ``key``, made by ``make`` (with gradient when ``trains``) if not kept."""
        if trains:
            if self.step is None or self.step_key != key:
                self.step, self.step_key = make(), key
            return self.step
        if self.frozen is None or self.frozen_key != key:
            with torch.no_grad():
                self.frozen = make()
            self.frozen_key = key
        return self.frozen

    def __deepcopy__(self, memo) -> "PrefixCache":
        return PrefixCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()


def version_key(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
    """What identifies the current values of ``tensors`` (None entries allowed) without comparing them."""
    return tuple(None if t is None else (id(t), t._version) for t in tensors)


def unfit_reason(model: nn.Module) -> Optional[str]:
    """Why the shared-prefix path cannot run ``model``'s text tower, or None when it can.

    It can for open_clip's ``CLIP`` text tower (every ViT and ResNet CLIP, ``-quickgelu`` included,
    lamm-tiny): causal mask, ``ResidualAttentionBlock``s with ``nn.MultiheadAttention``.
    """
    from open_clip.transformer import ResidualAttentionBlock

    for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "attn_mask"):
        if not hasattr(model, name):
            return f"{type(model).__name__} has no open_clip CLIP text tower (no {name})"
    mask = model.attn_mask
    if mask is None:
        return "the text tower has no causal mask"
    n = mask.shape[-1]
    if mask.shape != (n, n) or not torch.equal(mask.float(), _causal(n, mask.device)):
        return "the text tower's mask is not causal"
    if getattr(model.transformer, "grad_checkpointing", False):
        return "gradient checkpointing is on"
    blocks = getattr(model.transformer, "resblocks", None)
    if blocks is None:
        return f"the text transformer {type(model.transformer).__name__} has no resblocks"
    for i, block in enumerate(blocks):
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return f"text block {i} is a {type(block).__name__}, not open_clip's self-attention ResidualAttentionBlock"
        attn = block.attn
        if (not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim
                or attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn
                or attn.dropout != 0.0):
            return f"text block {i}'s attention is not a plain nn.MultiheadAttention"
    return None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, l, W]`` -> ``[N, heads, l, W / heads]``."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _causal(length: int, device: torch.device) -> torch.Tensor:
    """The additive causal mask ``[l, l]``: 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            past: Optional[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> torch.Tensor:
    """Attention of ``[N, heads, l, d]`` queries (already scaled) to their own rows' keys and values under
    the causal ``mask``, and to every token of ``past`` (``[heads, p, d]``, shared by every row).

    Returns:
        ``[N, l, heads * d]``, the heads side by side (what ``out_proj`` reads).
    """
    n, heads, length, d = q.shape
    own = q @ k.transpose(-2, -1) + mask.to(q.dtype)  # [N, H, l, l]
    if past is None:
        out = own.softmax(dim=-1) @ v
    else:
        pk, pv = past
        p = pk.shape[1]
        # rows of every class stacked per head: one [H, N*l, d] x [H, d, p] product, the prefix not copied
        q_rows = q.transpose(0, 1).reshape(heads, n * length, d)
        shared = (q_rows @ pk.transpose(-2, -1).to(q.dtype)).view(heads, n, length, p).transpose(0, 1)
        probs = torch.cat([shared, own.to(shared.dtype)], dim=-1).softmax(dim=-1)
        to_prefix, to_own = probs[..., :p], probs[..., p:]
        from_prefix = to_prefix.transpose(0, 1).reshape(heads, n * length, p) @ pv.to(to_prefix.dtype)
        out = to_own @ v.to(to_own.dtype) + from_prefix.view(heads, n, length, d).transpose(0, 1)
    return out.transpose(1, 2).reshape(n, length, heads * d)


def _qkv(block: nn.Module, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``block``'s in-projection output ``[N, l, 3W]`` as queries (scaled), keys and values ``[N, heads, l, d]``."""
    heads = block.attn.num_heads
    q, k, v = qkv.chunk(3, dim=-1)
    d = q.shape[-1] // heads
    return _heads(q, heads) * d ** -0.5, _heads(k, heads), _heads(v, heads)


def _block(block: nn.Module, x: torch.Tensor, past: Optional[tuple[torch.Tensor, torch.Tensor]],
           mask: torch.Tensor):
    """One ``ResidualAttentionBlock`` on ``x`` ``[N, l, W]`` (batch first) whose tokens follow ``past``.

    Each token attends causally (``mask``, :func:`_causal`) to the tokens of its own row and to every
    token of ``past`` (``[heads, p, d]`` keys and values, shared by every row).

    Returns:
        The block's output ``[N, l, W]``, and this block's keys and values of ``x`` ``[N, heads, l, d]``.
    """
    attn = block.attn
    q, k, v = _qkv(block, F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias))
    out = _attend(q, k, v, past, mask)
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)


def _packed_block(block: nn.Module, x: torch.Tensor, shapes: Sequence[tuple[int, int]],
                  past: tuple[torch.Tensor, torch.Tensor], masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`_block` on several buckets of rows at once: ``x`` ``[T, W]`` holds bucket after bucket, each
    ``[n, l, W]`` (``shapes``) flattened to ``n * l`` tokens.

    The per-token parts (layer norms, in- and out-projection, MLP) run once on all ``T`` tokens: each of
    the block's weight matrices is read once per pass, not once per bucket (a step on a few short
    prompts is bound by reading the weights, not by arithmetic). Attention runs per bucket, on views.
    """
    attn = block.attn
    width = x.shape[-1]
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    outs, start = [], 0
    for (n, length), mask in zip(shapes, masks):
        q, k, v = _qkv(block, qkv[start: start + n * length].view(n, length, 3 * width))
        outs.append(_attend(q, k, v, past, mask).reshape(n * length, width))
        start += n * length
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _replace(x: torch.Tensor, start: int, prompt: torch.Tensor) -> torch.Tensor:
    """``x`` ``[1, p, W]`` with positions ``start .. start+n`` replaced by ``prompt`` ``[n, W]``."""
    stop = start + prompt.shape[0]
    return torch.cat([x[:, :start], prompt.to(x.dtype).unsqueeze(0), x[:, stop:]], dim=1)


def encode_prefix(model: nn.Module, emb: torch.Tensor, deep: Sequence[torch.Tensor] = (),
                  start: int = 1) -> PrefixState:
    """Run the shared prefix ``emb`` ``[p, W]`` (SOS first) through the text tower, keeping keys and values.

    Args:
        model: an open_clip CLIP that fits (:func:`unfit_reason` is None).
        deep: MaPLe's text prompts of layers 1, 2, ...: ``deep[i - 1]`` replaces positions
            ``start ..`` of the stream before block i (they must lie inside the prefix).
    """
    p = emb.shape[0]
    x = (emb + model.positional_embedding[:p].to(emb.dtype)).unsqueeze(0)
    keys, values = [], []
    mask = _causal(p, x.device)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            if start + deep[i - 1].shape[0] > p:
                raise ValueError(f"deep prompts at {start}..{start + deep[i - 1].shape[0]} reach past the "
                                 f"{p}-token shared prefix")
            x = _replace(x, start, deep[i - 1])
        x, (k, v) = _block(block, x, None, mask)
        keys.append(k[0])
        values.append(v[0])
    return PrefixState(keys, values, p)


def length_groups(lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """Buckets ``(shortest, longest)`` of row lengths that make the text tower cheapest to run.

    A bucket pads its rows to its longest; each bucket also costs a fixed number of small kernels
    per block, worth about ``2**20 / width**2`` tokens of matmul work (4 tokens at ViT-B's width 512,
    256 at lamm-tiny's 64). Adjacent distinct lengths are merged where that is cheaper (dynamic
    programming over the sorted lengths): many short names next to one long one (ImageNet's) are not
    all padded to the long one, and a few prompts of similar length stay one batch.
    """
    counts: dict[int, int] = {}
    for n in lengths:
        counts[int(n)] = counts.get(int(n), 0) + 1
    distinct = sorted(counts)
    overhead = max(1.0, 2 ** 20 / width ** 2)
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: cheapest cover of the first j lengths
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        rows = 0
        for i in range(j, 0, -1):  # the last bucket is distinct[i-1 .. j-1]
            rows += counts[distinct[i - 1]]
            cost = best[i - 1] + rows * distinct[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    groups, j = [], len(distinct)
    while j:
        groups.append((distinct[cut[j]], distinct[j - 1]))
        j = cut[j]
    return groups[::-1]


def encode_rest(model: nn.Module, state: PrefixState, emb: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features ``[N, D]`` (not normalised) of prompts whose first ``state.length`` tokens are the prefix.

    Rows run in buckets of similar length (:func:`length_groups`), each cut after its longest EOT:
    little time goes into the padding after short names (the causal mask keeps it from mattering).
    The buckets' tokens travel packed through every block (:func:`_packed_block`).

    Args:
        emb: ``[N, l, W]`` token embeddings of the tokens after the prefix (rows may differ in length:
            anything after a row's EOT is ignored).
        eot: ``[N]`` EOT position of each row in the whole prompt (so at least ``state.length``).
    """
    p = state.length
    width = emb.shape[-1]
    last = eot.to(emb.device) - p  # each row's EOT among its own tokens
    parts, rows, shapes, masks, ends = [], [], [], [], []
    start = 0
    for shortest, longest in length_groups((last + 1).tolist(), width):
        idx = ((last + 1 >= shortest) & (last + 1 <= longest)).nonzero().squeeze(1)
        x = emb[idx, :longest] + model.positional_embedding[p: p + longest].to(emb.dtype)
        parts.append(x.reshape(-1, width))
        rows.append(idx)
        shapes.append((len(idx), longest))
        masks.append(_causal(longest, x.device))
        # where each row's EOT sits in the packed tokens
        ends.append(start + torch.arange(len(idx), device=x.device) * longest + last[idx])
        start += len(idx) * longest
    x = parts[0] if len(parts) == 1 else torch.cat(parts)
    for block, k, v in zip(model.transformer.resblocks, state.keys, state.values):
        x = _packed_block(block, x, shapes, (k, v), masks)
    # per token, the EOT's is enough. (Finishing only the EOT tokens in the last block would save more,
    # but its smaller products round differently on two threads: the numbers would move in the last bit.)
    x = model.ln_final(x[ends[0] if len(ends) == 1 else torch.cat(ends)])  # bucket after bucket
    proj = model.text_projection
    feats = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    if len(rows) == 1:  # one bucket holds every row, in order
        return feats
    return feats[torch.argsort(torch.cat(rows))]


def describe(reason: Optional[str]) -> str:
    """One log line naming the text path a classifier runs (``reason``: :func:`unfit_reason`'s answer)."""
    if reason is None:
        return ("text encoder: shared prefix (the prompt tokens before the class name are encoded once "
                "and every class's own tokens attend to them)")
    return f"text encoder: full prompt per class (the shared prefix does not fit: {reason})"


class _Forward(logging.Handler):
    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.log = log
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.said:  # one line per run, not one per strategy and seed
            self.said.add(msg)
            self.log(f"  {msg}")


@contextmanager
def text_path_log(log: Callable[[str], None]) -> Iterator[None]:
    """While inside, the model's INFO lines (which text path runs) go to ``log``, each distinct line once."""
    target = logging.getLogger("lamm_cl.model")
    handler, level, propagate = _Forward(log), target.level, target.propagate
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    # only to the run's log: a root handler some library installed would print each line again on stderr
    target.propagate = False
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
        target.propagate = propagate
