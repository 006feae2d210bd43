"""Frozen CLIP from open_clip, with a text encoder driven from token embeddings.

The architecture and its weights are named apart (``ViT-B-16`` + ``openai``).
``lamm-tiny`` is a registered miniature architecture (width 64, 2 layers,
32 px) for tests and the offline quickstart.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from lamm_cl.errors import ConfigError, DataNotFoundError
from lamm_cl.safe_io import file_sha256

TINY_ARCH = "lamm-tiny"
_CONFIG_DIR = Path(__file__).parent / "configs"
_INIT_SEED = 0  # random weights (`pretrained: none`) are drawn with a fixed seed, so features are shareable
TINYWORLD = "tinyworld"  # lamm-tiny pretrained on lamm_cl.tiny's captioned world; the file ships with the package
TINYWORLD_FILE = Path(__file__).parent.parent / "tiny" / "lamm-tiny-tinyworld.pt"
PRECISIONS = ("bf16-autocast", "fp16", "fp32")  # model.precision (see build_clip)


def _open_clip():
    from lamm_cl.heavy_imports import collector_paused

    with collector_paused():  # a second or so of imports (open_clip, timm) the first time
        import open_clip

    if TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


@functools.lru_cache(maxsize=None)
def tokenizer_of(arch: str):
    """open_clip's tokenizer for ``arch``, built once per process and shared.

    Building one reads and parses the whole BPE vocabulary (~0.15 s), and a run, a sweep job or a
    saved-model load builds CLIP more than once; the tokenizer holds no per-model state (only a memo of
    the words it has split), so every FrozenCLIP of one architecture can use the same one.
    """
    return _open_clip().get_tokenizer(arch)


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def weights_identity(arch: str, pretrained: str, sha256: str | None = None) -> str:
    """A string that changes whenever the weights do: the tag, or a hash of the checkpoint file.

    Args:
        sha256: the checkpoint file's hash when already computed (saves reading the file twice).
    """
    if pretrained == "none":
        return f"{arch}:none:seed{_INIT_SEED}"
    path = TINYWORLD_FILE if pretrained == TINYWORLD else Path(pretrained).expanduser()
    if path.is_file():
        return f"{arch}:file:{(sha256 or file_sha256(path))[:20]}"
    return f"{arch}:{pretrained}"


@dataclass
class TokenizedPrompts:
    """Token ids of prompts, cut after the longest EOT.

    Attributes:
        ids: int64 ``[N, L]``, L = 1 + the largest EOT position.
        eot: int64 ``[N]``, the EOT position of each prompt.
    """

    ids: torch.Tensor
    eot: torch.Tensor


class FrozenCLIP:
    """A frozen open_clip CLIP model plus what strategies need around it.

    Attributes:
        model: the open_clip model (every parameter ``requires_grad=False``).
        preprocess: the evaluation transform (resize, centre crop, normalise).
        tokenizer: open_clip's tokenizer for ``arch``.
        arch, pretrained: the names the model was built from.
        identity: weights identity for cache keys (see :func:`weights_identity`).
        weights_file: the file the weights were read from (None: random weights, or not known).
        weights_sha256: SHA-256 of that file's bytes (None without a file).
        device: where the model lives.
        precision: ``bf16-autocast``, ``fp16`` or ``fp32`` (see :func:`build_clip`).
    """

    def __init__(self, model, preprocess: Callable, tokenizer, arch: str, pretrained: str, device: torch.device,
                 weights_file: str | None = None, weights_sha256: str | None = None,
                 precision: str = "bf16-autocast"):
        self.model = model
        self.precision = precision
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.arch = arch
        self.pretrained = pretrained
        self.weights_file = weights_file
        self.weights_sha256 = weights_sha256
        self.identity = weights_identity(arch, pretrained, weights_sha256)
        self.device = device
        self.model.requires_grad_(False)
        self.model.eval()

    def weights_record(self) -> dict:
        """What a result records about the weights: architecture, tag or path, file and its SHA-256."""
        return {"arch": self.arch, "pretrained": self.pretrained, "file": self.weights_file,
                "sha256": self.weights_sha256}

    @property
    def dtype(self) -> torch.dtype:
        """What the towers compute in, and what trainable vectors and features are held in: float16 with
        ``precision: fp16``, else float32 (autocast, where on, lowers the arithmetic only)."""
        return torch.float16 if self.precision == "fp16" else torch.float32

    # -- sizes ---------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Width of the joint image/text feature space."""
        return int(self.model.text_projection.shape[1])

    @property
    def token_width(self) -> int:
        """Width of a token embedding (what a label vector or context vector is)."""
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, exponentiated (alpha in the LAMM notation)."""
        return float(self.model.logit_scale.exp())

    # -- text ----------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOS/EOT."""
        ids = self.tokenizer([text])[0].tolist()
        eot = int(torch.tensor(ids).argmax())
        return ids[1:eot]

    @property
    def sos_id(self) -> int:
        return int(self.tokenizer([""])[0][0])

    @property
    def eot_id(self) -> int:
        return int(self.tokenizer([""])[0][1])

    def tokenize(self, texts: Sequence[str]) -> TokenizedPrompts:
        """Tokenize ``texts`` and cut every row after the longest EOT."""
        ids = self.tokenizer(list(texts))
        eot = ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        return TokenizedPrompts(ids[:, : int(eot.max()) + 1].contiguous(), eot)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, L, W]`` of token ids (no positional part), in :attr:`dtype`."""
        return self.model.token_embedding(ids.to(self.device))

    def encode_text_embeddings(self, emb: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Run CLIP's text tower from token embeddings.

        The mask is causal and CLIP pools at EOT, so a prompt cut after its EOT
        gives the same feature as the full context; ``emb`` may be any length up
        to the context length.

        Args:
            emb: ``[N, L, W]`` token embeddings (trainable vectors spliced in).
            eot: ``[N]`` EOT position of each row.
        Returns:
            ``[N, D]`` text features, not normalised.
        """
        m = self.model
        length = emb.shape[1]
        x = emb + m.positional_embedding[:length].to(emb.dtype)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
        proj = m.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Text features ``[N, D]`` (not normalised) of plain prompts, cut after the longest EOT."""
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenize(texts[i : i + batch_size])
            out.append(self.encode_text_embeddings(self.embed_tokens(tok.ids), tok.eot))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)

    # -- images --------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[N, D]`` (not normalised) of preprocessed images ``[N, 3, H, W]``."""
        return self.model.encode_image(images.to(self.device, self.dtype))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is not a device.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device: {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for, but CUDA is not available here; use auto or cpu")
    return dev


class _QuietRandomInit(logging.Filter):
    """Drops open_clip's own log lines for what build_clip reports itself (random weights, a failed download)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "No pretrained weights loaded" not in msg and "Failed to download" not in msg


def resolve_weights(arch: str, pretrained: str) -> str | None:
    """Check an architecture and its weights without loading anything.

    Returns:
        What to hand open_clip: a tag, a checkpoint path, or None for random weights.
    Raises:
        ConfigError: unknown architecture or tag.
        DataNotFoundError: a checkpoint file is missing.
    """
    open_clip = _open_clip()
    if arch not in open_clip.list_models():
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; try `python -c \"import open_clip; "
                          f"print(open_clip.list_models())\"` or {TINY_ARCH!r} for the tiny offline model")
    if pretrained == "none":
        return None
    if pretrained == TINYWORLD:
        if arch != TINY_ARCH:
            raise ConfigError(f"model.pretrained: {TINYWORLD!r} weights exist for {TINY_ARCH!r} only, not {arch!r}")
        if not TINYWORLD_FILE.is_file():
            raise DataNotFoundError(f"model.pretrained: the packaged weights {TINYWORLD_FILE} are missing; "
                                    "reinstall lamm-cl or make them with `python -m lamm_cl.tiny pretrain --out FILE`")
        return str(TINYWORLD_FILE)
    if _looks_like_path(pretrained) or Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"model.pretrained: checkpoint file {path} not found; give an existing "
                                    "file, an open_clip tag such as 'openai', or 'none'")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ConfigError(f"model.pretrained: {pretrained!r} is not a tag of {arch}; known: "
                          f"{', '.join(tags) or '(none)'}, or a checkpoint file, or 'none'")
    return pretrained


def build_clip(arch: str, pretrained: str, device: str | torch.device = "cpu",
               precision: str = "bf16-autocast") -> FrozenCLIP:
    """Build a frozen CLIP from an open_clip architecture name and its weights.

    ``precision: fp16`` builds the model as the reference runs it: open_clip's fp16 build converts the
    convolutions, linear layers, attention and projections to fp16 and keeps each LayerNorm computing in
    fp32, as OpenAI's ``clip.model.convert_weights`` and its LayerNorm do (the reference loads CLIP that
    way: gaojingsheng/LAMM trainers/coop.py, ``CoOp.build_model`` keeps CLIP's fp16 unless ``PREC`` is
    fp32 or amp). The token and positional embeddings are cast to fp16 too: the reference casts both
    with ``.type(dtype)`` before every use (its ``PromptLearner`` and ``TextEncoder``), which gives the
    same numbers. ``bf16-autocast`` and ``fp32`` keep every weight in fp32.

    Args:
        arch: an open_clip architecture (``ViT-B-16``) or ``lamm-tiny``.
        pretrained: an open_clip pretrained tag (``openai``), a checkpoint file, ``none``, or
            ``tinyworld`` (lamm-tiny's packaged weights, see :mod:`lamm_cl.tiny`).
        device: where to put it.
        precision: ``bf16-autocast`` (default), ``fp16`` or ``fp32``.
    Raises:
        ConfigError: unknown architecture or tag.
        DataNotFoundError: a checkpoint file is missing or a tag cannot be downloaded.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    open_clip = _open_clip()
    device = torch.device(device)
    weights = resolve_weights(arch, pretrained)
    if weights is None:
        warnings.warn(f"model.pretrained: none -- {arch} has random weights; its accuracies say nothing "
                      "about pretrained CLIP", stacklevel=2)
    torch.manual_seed(_INIT_SEED)
    quiet = _QuietRandomInit()
    logging.getLogger().addFilter(quiet)  # open_clip logs its own "no pretrained weights" line; we warned above
    loaded: list[str] = []
    try:
        with _record_checkpoint_paths(loaded):
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=device, precision="fp16" if precision == "fp16" else "fp32")
    except Exception as e:  # hub, network and file errors all mean "these weights are not here"
        if weights is None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataNotFoundError(f"model.pretrained: could not load {arch} weights {weights!r} ({first}); "
                                "when offline, download once elsewhere and give the checkpoint file's path") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    if precision == "fp16":
        _embeddings_to_fp16(model)
    weights_file = loaded[-1] if loaded else None
    if weights_file is None and weights is not None:  # an open_clip that loads by another route: ask it
        weights_file = _resolved_file(open_clip, arch, weights)
    # Hashed once per build (one build per run), from the bytes actually on disk now.
    sha = file_sha256(weights_file) if weights_file is not None else None
    return FrozenCLIP(model, preprocess, tokenizer_of(arch), arch, pretrained, device,
                      weights_file=str(Path(weights_file).resolve()) if weights_file else None, weights_sha256=sha,
                      precision=precision)


def _embeddings_to_fp16(model) -> None:
    """The text tower's token and positional embeddings in fp16 (open_clip's fp16 build leaves both fp32)."""
    for owner in (model, getattr(model, "text", None)):
        emb = getattr(owner, "token_embedding", None)
        if isinstance(emb, torch.nn.Embedding):
            emb.half()
        pos = getattr(owner, "positional_embedding", None)
        if isinstance(pos, torch.nn.Parameter):
            pos.data = pos.data.half()


@contextmanager
def _record_checkpoint_paths(into: list):
    """While open_clip builds a model, note every checkpoint file its factory loads.

    open_clip 3.x resolves a tag to a file (hub download or cache) inside ``create_model`` and
    hands that path to ``factory.load_checkpoint``; recording it there names the very file whose
    bytes became the weights, without a second download.
    """
    from open_clip import factory

    original = getattr(factory, "load_checkpoint", None)
    if original is None:
        yield
        return

    def recording(model, checkpoint_path, *args, **kwargs):
        into.append(str(checkpoint_path))
        return original(model, checkpoint_path, *args, **kwargs)

    factory.load_checkpoint = recording
    try:
        yield
    finally:
        factory.load_checkpoint = original


def _resolved_file(open_clip, arch: str, weights: str) -> str | None:
    """The local file behind a tag or path, when open_clip can say without loading anything."""
    if Path(weights).expanduser().is_file():
        return str(Path(weights).expanduser())
    try:
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        return open_clip.download_pretrained(cfg) if cfg else None  # already in the cache: no download
    except Exception:  # the hash is a record, not a requirement: never fail a run for it
        return None


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension."""
    return F.normalize(x, dim=-1)


def weights_on_disk(arch: str, weights: str | None) -> tuple[str | None, str]:
    """Where the weights :func:`resolve_weights` named will be read from, found without downloading.

    Follows open_clip's own route (``open_clip.pretrained.download_pretrained``): a file as given; else the
    Hugging Face Hub when the tag has an ``hf_hub`` entry and ``huggingface_hub`` is installed (a
    ``.safetensors`` file first), looked up in the local Hub cache only; else the tag's URL, in
    ``~/.cache/clip``. Never touches the network.

    Returns:
        The file (None when the run would have to download it) and one line saying where it is, or what
        the run will download and from where.
    """
    if weights is None:
        return None, "random weights: nothing to load"
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path), f"read from {path}"
    from open_clip import pretrained

    cfg = _open_clip().get_pretrained_cfg(arch, weights) or {}
    if cfg.get("file"):
        return str(cfg["file"]), f"read from {cfg['file']}"
    hub = cfg.get("hf_hub", "")
    if hub and pretrained.has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or pretrained.HF_WEIGHTS_NAME
        names = [*pretrained._get_safe_alternatives(filename), filename] if pretrained._has_safetensors else [filename]
        for name in names:
            found = try_to_load_from_cache(model_id, name)
            if isinstance(found, str):
                return found, f"in the Hugging Face cache: {found}"
        return None, (f"not downloaded yet: the run will download {names[0]} from https://huggingface.co/{model_id} "
                      f"into {constants.HF_HUB_CACHE} (offline, download it once elsewhere and give the file's path)")
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target), f"in open_clip's cache: {target}"
        return None, (f"not downloaded yet: the run will download {url} into {target.parent} (offline, download "
                      "it once elsewhere and give the file's path)")
    return None, f"open_clip names no file or address for {arch} + {weights}"
