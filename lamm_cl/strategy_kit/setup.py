"""What a strategy's options are checked against before any strategy trains: :class:`StrategySetup`.

A run builds the setup once its CLIP is built (:func:`setup_of_clip`); ``--dry-run`` builds it from the
architecture's open_clip config, loading no weights (:func:`setup_of_arch`). :func:`check_strategies` then
asks every strategy's options (``check_setup``), so a MaPLe ``prompt_depth`` deeper than the model or a
RanPAC ``M`` too large for the device is refused, naming ``strategies[i]``, before the first strategy
trains and writes anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:
    import torch

    from lamm_cl.model.clip import FrozenCLIP


@dataclass(frozen=True)
class StrategySetup:
    """The model, data and device a run will use, as far as options are checked against them.

    Attributes:
        arch: the model's architecture (``model.arch``).
        embed_dim: width of CLIP's joint image/text feature space.
        text_blocks: transformer blocks of the text tower (None: not an open_clip transformer).
        vision_blocks: transformer blocks of the image tower; None when it is not a ViT (a ResNet, a timm tower).
        n_classes: classes of the benchmark.
        train_sizes: training samples of each experience (the largest over the run's seeds).
        device: where the run trains (``cpu``, ``cuda:0``).
        memory_free: bytes free on that device now; None where it cannot be known.
        count_tokens: BPE tokens of a text, without SOS and EOT; None when no tokenizer is at hand.
    """

    arch: str
    embed_dim: int
    text_blocks: Optional[int]
    vision_blocks: Optional[int]
    n_classes: int
    train_sizes: tuple[int, ...]
    device: str
    memory_free: Optional[int]
    count_tokens: Optional[Callable[[str], int]] = None


def free_memory(device: "torch.device | str") -> Optional[int]:
    """Bytes free on ``device`` now: CUDA's own count; for the CPU the kernel's ``MemAvailable``, or less
    where the process's cgroup (a SLURM job's memory, a container's) allows less (None where nothing can be
    read)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    if dev.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:  # other POSIX systems: free pages (page cache not counted, so this errs low)
            free = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    room = cgroup_room()
    return room if free is None else free if room is None else min(free, room)


_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712), v2 as `max`


def cgroup_room(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> Optional[int]:
    """Bytes the memory limits of this process's cgroup and of every cgroup above it still allow (the
    smallest limit minus usage), or None without a limit. Reads cgroup v2 (``memory.max``, ``memory.current``)
    and v1 (``memory/memory.limit_in_bytes``, ``memory.usage_in_bytes``); a level that cannot be read (a
    container sees its own cgroup as the root) is skipped."""
    try:
        lines = proc.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, where = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        parts = [p for p in where.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each one above it
            level = base.joinpath(*parts[:depth])
            try:
                limit = (level / files[0]).read_text(encoding="ascii").strip()
                used = int((level / files[1]).read_text(encoding="ascii"))
            except (OSError, ValueError):
                continue
            if limit != "max" and limit.isdigit() and int(limit) < _NO_LIMIT:
                rooms.append(max(int(limit) - used, 0))
    return min(rooms) if rooms else None


def _train_sizes(plans: Sequence) -> tuple[int, ...]:
    """Training samples of each experience, the largest over ``plans`` (one per seed)."""
    sizes: list[int] = []
    for plan in plans:
        for t, index in enumerate(plan.train_index):
            n = len(index)
            if t < len(sizes):
                sizes[t] = max(sizes[t], n)
            else:
                sizes.append(n)
    return tuple(sizes)


def _blocks(transformer) -> Optional[int]:
    blocks = getattr(transformer, "resblocks", None)
    return len(blocks) if blocks is not None else None


def setup_of_clip(clip: "FrozenCLIP", plans: Sequence, device: "torch.device") -> StrategySetup:
    """The setup of a run whose CLIP is built (``plans``: each seed's :class:`~lamm_cl.benchmark.Plan`)."""
    visual = clip.model.visual
    is_vit = hasattr(visual, "_embeds") and hasattr(visual, "transformer")  # as deep_prompts.prompt_depth_limit
    first = next(iter(plans))
    return StrategySetup(
        arch=clip.arch, embed_dim=clip.embed_dim, text_blocks=_blocks(getattr(clip.model, "transformer", None)),
        vision_blocks=_blocks(visual.transformer) if is_vit else None, n_classes=len(first.class_names),
        train_sizes=_train_sizes(plans), device=str(device), memory_free=free_memory(device),
        count_tokens=lambda text: len(clip.token_ids(text)))


def setup_of_arch(arch: str, plans: Sequence, device: "torch.device") -> StrategySetup:
    """The setup read from open_clip's config of ``arch``: no weights are loaded, nothing is downloaded.

    Block counts come from the config's ``layers`` (a list of stages, for a ResNet, means no ViT; a timm or
    Hugging Face tower is not an open_clip transformer); tokens are counted with open_clip's own BPE
    tokenizer where the config names no Hugging Face one (which could need a download).
    """
    from lamm_cl.model.clip import _open_clip, tokenizer_of

    open_clip = _open_clip()
    cfg = open_clip.get_model_config(arch) or {}
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    vision_layers, text_layers = vision.get("layers"), text.get("layers")
    vision_blocks = vision_layers if isinstance(vision_layers, int) and not vision.get("timm_model_name") else None
    text_blocks = text_layers if isinstance(text_layers, int) and not text.get("hf_model_name") else None
    count = None
    if "hf_tokenizer_name" not in text:
        tokenizer = tokenizer_of(arch)
        encode = getattr(tokenizer, "encode", None)
        if encode is not None:
            count = lambda text: len(encode(text))  # noqa: E731 - what FrozenCLIP.token_ids counts
    first = next(iter(plans))
    return StrategySetup(arch=arch, embed_dim=int(cfg.get("embed_dim", 0)), text_blocks=text_blocks,
                         vision_blocks=vision_blocks, n_classes=len(first.class_names),
                         train_sizes=_train_sizes(plans), device=str(device), memory_free=free_memory(device),
                         count_tokens=count)


def check_strategies(strategies: Sequence, setup: StrategySetup) -> None:
    """Ask every strategy entry's options (``check_setup``) about ``setup``, in config order.

    Raises:
        ConfigError: the first refusal, naming ``strategies[i].<key>``.
    """
    for i, entry in enumerate(strategies):
        check = getattr(entry.options, "check_setup", None)
        if check is not None:
            check(setup, f"strategies[{i}]")
