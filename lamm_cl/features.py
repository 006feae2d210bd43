"""Frozen image features, computed once and shared by every frozen-encoder strategy, seed and run.

A strategy whose image encoder is frozen sees the same image feature every
epoch, so the encoder runs once per *key*: (architecture + weights identity,
the images, the transform, the view). The :class:`FeatureStore` keeps each
key's ``[N, D]`` array on disk as a memory-mapped ``.npy`` file beside a JSON
file holding the key's full text and the data file's SHA-256; an entry is read
only when that text, the shape, the dtype, the file size and the checksum all
check out. Anything else -- a half-written, truncated, garbled or mismatched
entry -- is deleted and recomputed.

Several processes may share a store (a sweep's jobs): an entry is computed under
an exclusive file lock (``<hash>.lock``, :func:`fcntl.flock`), so the encoder runs
once and the others wait, then read it. A valid entry is never rewritten, so
reading needs no lock (a read-only store that holds every entry works). Space for
an entry is reserved before it is written, so a full disk is one clear error
rather than a SIGBUS, and temporary files of killed writers are swept.

``features.train_views: V`` adds V augmented views of every training image
(CoOp's random resized crop + horizontal flip), each seeded by (view, image) so
that a view is the same in every run and can be cached like the centre crop.
During training one view is drawn per epoch from the run's seed
(:func:`draw_view`), through a small shared :class:`ViewSchedule` that a
plugin (:class:`TrainViewPlugin`) sets before each epoch.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from avalanche.training.plugins import SupervisedPlugin

from lamm_cl.data.base import ImageError, Samples
from lamm_cl.errors import UserError
from lamm_cl.model.clip import FrozenCLIP

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: entries are still published atomically, just not locked
    fcntl = None

STORE_FORMAT = "lamm-cl features v1"  # part of every key: bump it when the layout or the meaning changes
DTYPES = ("float32", "float16")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # function reprs carry a per-process address


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lamm-cl/features``, else ``~/.cache/lamm-cl/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lamm-cl" / "features"


def transform_identity(transform: Callable) -> str:
    """A string naming a transform pipeline by its parameters (stable across processes)."""
    return hashlib.sha1(_ADDRESS.sub("", repr(transform)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# what the encoder reads
# ---------------------------------------------------------------------------

class ImageReader(torch.utils.data.Dataset):
    """``samples[i]`` as a preprocessed image tensor."""

    def __init__(self, samples: Samples, transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.samples.image(i))


class _Checked(torch.utils.data.Dataset):
    """A reader whose undecodable images come back as their error message (see :func:`_collate_checked`).

    Raised in a DataLoader worker, the error would reach the user wrapped in the worker's traceback.
    """

    def __init__(self, reader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        try:
            return self.reader[i]
        except ImageError as e:
            return str(e)


def _collate_checked(batch: list):
    """Stack a batch, or hand on the first error message in it."""
    bad = next((b for b in batch if isinstance(b, str)), None)
    return bad if bad is not None else torch.utils.data.default_collate(batch)


class AugmentedView:
    """CoOp's training augmentation -- random resized crop (scale 0.08-1, bicubic) and a horizontal
    flip, then CLIP's normalisation -- drawn from a seed, so ``(image, seed)`` always gives the same view.

    Args:
        size: output side in pixels (the model's input size).
        mean, std: CLIP's normalisation.
        scale: the crop's area range, as CoOp's ``RRCROP_SCALE``.
    """

    def __init__(self, size: int, mean, std, scale: tuple[float, float] = (0.08, 1.0)):
        from torchvision import transforms as T

        self.crop = T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
        self.flip = T.RandomHorizontalFlip()
        self.tail = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    @classmethod
    def for_clip(cls, clip: FrozenCLIP) -> "AugmentedView":
        """The augmentation at ``clip``'s input size with the normalisation of its own preprocessing."""
        from torchvision import transforms as T

        norm = next((t for t in getattr(clip.preprocess, "transforms", []) if isinstance(t, T.Normalize)), None)
        if norm is None:
            raise ValueError("the model's preprocessing has no Normalize step to copy for augmented views")
        return cls(clip.image_size, norm.mean, norm.std)

    def __call__(self, image, seed: int) -> torch.Tensor:
        # torchvision draws crop and flip from the global RNG; fork it so the caller's stream is untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.tail(self.flip(self.crop(image)))

    def __repr__(self) -> str:
        return f"AugmentedView(seed=(view, index), crop={self.crop!r}, flip={self.flip!r}, tail={self.tail!r})"


def view_seed(view: int, index: int) -> int:
    """The seed of view ``view`` of image ``index``: fixed, so a view is the same in every run.

    Store keys name views by index only: changing this function means bumping ``STORE_FORMAT``.
    """
    return int(np.random.SeedSequence([view, index]).generate_state(1)[0])


class ViewReader(torch.utils.data.Dataset):
    """``samples[i]`` as augmented view ``view`` (see :class:`AugmentedView`)."""

    def __init__(self, samples: Samples, augment: AugmentedView, view: int):
        self.samples = samples
        self.augment = augment
        self.view = view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.augment(self.samples.image(i), view_seed(self.view, i))


# ---------------------------------------------------------------------------
# the on-disk store
# ---------------------------------------------------------------------------

def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)
_TMP = ".tmp-"  # temporary files are ``<entry file>.tmp-<pid>-<hex>``
_CHUNK = 16 << 20


def file_sha256(path_or_file) -> str:
    """SHA-256 of a file's bytes (a path, or an open binary file read from its start), read in 16 MiB chunks."""
    h = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        f = path_or_file if hasattr(path_or_file, "readinto") else stack.enter_context(open(path_or_file, "rb"))
        f.seek(0)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


class FeatureStore:
    """Feature arrays on disk, one ``<hash>.npy`` + ``<hash>.json`` pair per key.

    Writes go to a temporary name and are renamed into place (data first, then the
    JSON that vouches for it, with the data's SHA-256), so a reader never sees a
    half-written or garbled entry as valid. :meth:`locked` serialises the writers
    of one key across processes.

    Args:
        root: the folder (created on first write).
    """

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root).expanduser()
        self.discarded: list[str] = []  # one line per invalid entry deleted, for the run's log

    def paths(self, key: str) -> tuple[Path, Path]:
        """The data and metadata files of ``key``."""
        name = hashlib.sha256(key.encode()).hexdigest()[:40]
        return self.root / f"{name}.npy", self.root / f"{name}.json"

    def lock_path(self, key: str) -> Path:
        """The lock file of ``key``'s entry (kept: deleting lock files races with their waiters)."""
        return self.paths(key)[0].with_suffix(".lock")

    # -- errors that are the user's to fix ---------------------------------------------------
    def _unwritable(self, e: OSError, what: str = "") -> UserError:
        why = e.strerror or str(e)
        if e.errno in _NO_SPACE:
            return UserError(f"feature store {self.root}: no space left{what} ({why}); free space there, set "
                             "features.cache_dir to another folder, or set features.cache: false")
        return UserError(f"feature store {self.root}: cannot write there ({why}); set features.cache_dir to a "
                         "writable folder, or set features.cache: false")

    def check(self) -> None:
        """Refuse, before any work, a store folder that cannot be one (it, or a folder above it, is a file).

        Raises:
            UserError: naming ``features.cache_dir``.
        """
        probe = self.root
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise UserError(f"features.cache_dir: {self.root} cannot be a folder because {probe} is a file; "
                            "set features.cache_dir to a folder")

    def _mkdir(self) -> None:
        self.check()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None

    # -- reading --------------------------------------------------------------------------------
    def load(self, key: str, shape: tuple[int, ...], dtype: str, discard: bool = True) -> Optional[np.ndarray]:
        """The memory-mapped array of ``key``, or None when there is no valid entry.

        An entry that fails any check (missing or unreadable metadata, another key's
        text, a different shape or dtype, a data file of the wrong size or checksum)
        is deleted when ``discard`` (do that only under :meth:`locked`).
        """
        data, meta = self.paths(key)
        if not data.exists() and not meta.exists():
            return None
        arr, why = self._read(key, tuple(shape), np.dtype(dtype), data, meta)
        if arr is None and discard:
            _remove(data, meta)
            self.discarded.append(f"feature store {self.root}: entry {data.name} {why}; recomputing it")
        return arr

    @staticmethod
    def _read(key: str, shape: tuple, dtype: np.dtype, data: Path, meta: Path) -> tuple[Optional[np.ndarray], str]:
        try:
            info = json.loads(meta.read_text())
            if not isinstance(info, dict) or info.get("key") != key:
                return None, "belongs to another key"
            if tuple(info.get("shape") or ()) != shape or info.get("dtype") != dtype.name:
                return None, "has another shape or dtype"
            # One open file for size, checksum and map: what was checked is what is mapped.
            with open(data, "rb") as f:
                if os.fstat(f.fileno()).st_size != info.get("nbytes"):
                    return None, "has the wrong size"
                if "sha256" not in info:  # written before entries carried a checksum: nothing to check it by
                    return None, "has no checksum (written by an older lamm-cl)"
                if file_sha256(f) != info["sha256"]:
                    return None, "failed its checksum (garbled on disk)"
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                got_shape, fortran, got_dtype = read_header(f)
                if tuple(got_shape) != shape or got_dtype != dtype or fortran:
                    return None, "has another shape or dtype"
                if int(np.prod(shape)) == 0:
                    return np.zeros(shape, dtype), ""
                # copy-on-write: torch may view it, never writes back; the map outlives the file object
                return np.memmap(f, dtype=dtype, mode="c", shape=shape, offset=f.tell()), ""
        except FileNotFoundError:
            return None, "is incomplete"
        except (OSError, ValueError, TypeError) as e:
            return None, f"is unreadable ({type(e).__name__})"

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, key: str):
        """Hold ``key``'s exclusive lock for the block, waiting while another process holds it.

        Raises:
            UserError: the store folder cannot be written (read-only, not a folder, full).
        """
        self._mkdir()
        if fcntl is None:  # pragma: no cover
            yield
            return
        try:
            fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _allocate(self, path: Path, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A writable map of a new ``.npy`` file whose every block is reserved on disk now.

        A memory map over a sparse file dies with SIGBUS when the disk fills; reserving the
        blocks first turns that into ENOSPC here, before any feature is computed.
        """
        import io

        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": shape})
        total = len(head.getvalue()) + int(np.prod(shape)) * dtype.itemsize
        try:
            with open(path, "xb") as f:
                f.write(head.getvalue())
                f.flush()
                try:
                    os.posix_fallocate(f.fileno(), 0, total)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)):
                        raise
                    zeros = bytes(min(_CHUNK, total))  # no fallocate on this filesystem: write the blocks
                    left = total - f.tell()
                    while left > 0:
                        left -= f.write(zeros[:left])
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise self._unwritable(e, f" for a {total / 2**20:.1f} MiB entry") from None
        if total == len(head.getvalue()):
            return np.zeros(shape, dtype)
        return np.lib.format.open_memmap(path, mode="r+")

    @contextlib.contextmanager
    def writer(self, key: str, shape: tuple[int, ...], dtype: str):
        """Yield a writable memory-mapped array; on a clean exit it becomes ``key``'s entry.

        On an exception the temporary file is removed and nothing is published. Hold
        :meth:`locked` around it when other processes may share the store.

        Raises:
            UserError: no space or no permission to write in the store folder.
        """
        self._mkdir()
        data, meta = self.paths(key)
        tag = f"{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_data, tmp_meta = data.with_name(data.name + tag), meta.with_name(meta.name + tag)
        try:
            arr = self._allocate(tmp_data, tuple(shape), np.dtype(dtype))
            yield arr
            if isinstance(arr, np.memmap):
                arr.flush()
            # else an empty entry: nothing was mapped, and the header _allocate wrote is the whole file
            del arr
            info = {"key": key, "shape": list(shape), "dtype": dtype, "nbytes": tmp_data.stat().st_size,
                    "sha256": file_sha256(tmp_data)}
            try:
                tmp_meta.write_text(json.dumps(info, indent=1))
            except OSError as e:
                raise self._unwritable(e) from None
            os.replace(tmp_data, data)
            os.replace(tmp_meta, meta)
        finally:
            _remove(tmp_data, tmp_meta)

    def sweep_temporaries(self, before: Optional[float] = None) -> list[Path]:
        """Delete temporary files that killed writers left: those older than ``before`` (default: now)
        whose entry no live process is writing (its lock is free). Returns the paths deleted."""
        if fcntl is None or not self.root.is_dir():
            return []
        before = time.time() if before is None else before
        gone = []
        try:
            stale = [p for p in self.root.iterdir() if _TMP in p.name]
        except OSError:
            return []
        for p in stale:
            lock = self.root / (p.name.split(".", 1)[0] + ".lock")
            try:
                if p.stat().st_mtime >= before:
                    continue
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:  # gone already, or a read-only store: leave it
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live writer holds it
            try:
                p.unlink()
                gone.append(p)
            except OSError:
                pass
            finally:
                os.close(fd)
        return gone


def entry_bytes(n_images: int, dim: int, dtype: str = "float32") -> int:
    """Bytes of the data file of an ``[n_images, dim]`` entry: the .npy header plus the array."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": (n_images, dim)})
    return len(buf.getvalue()) + n_images * dim * np.dtype(dtype).itemsize


# ---------------------------------------------------------------------------
# CUDA helpers (the CPU path stays fp32 and untouched)
# ---------------------------------------------------------------------------

def autocast(device: torch.device, training: bool = False):
    """Autocast for a forward pass on ``device``: bf16 on CUDA where supported; a no-op on CPU.

    Without bf16, inference may use fp16; training stays fp32 (fp16 training would need a loss scaler).
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext() if training else torch.autocast("cuda", dtype=torch.float16)


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
        self._ctx = autocast(self.device, training=True)
        self._ctx.__enter__()

    def before_backward(self, strategy, **kwargs):
        self._exit()

    def after_training_iteration(self, strategy, **kwargs):
        self._exit()  # in case a plugin skipped backward

    def _exit(self):
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)


# ---------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------

class FeatureExtractor:
    """Image features of whole sample sets, computed in batches, kept in memory and in the store.

    Args:
        clip: the frozen CLIP.
        cache_dir: the on-disk store's folder, or None to keep features in memory only.
        dtype: ``float32`` or ``float16`` -- how features are stored (fp16 halves the store;
            features are returned as stored and read as float32 by :class:`Inputs` readers).
        batch_size: images per encoder call; None sizes it to the device.
        progress: a ``(iterable, total, desc) -> iterable`` wrapper for progress bars, or None.
        num_workers: DataLoader workers that decode images; None: 0 on CPU, up to 8 on CUDA.
    """

    def __init__(self, clip: FrozenCLIP, cache_dir: Union[str, Path, None] = None, dtype: str = "float32",
                 batch_size: Optional[int] = None, progress: Optional[Callable] = None,
                 num_workers: Optional[int] = None):
        if dtype not in DTYPES:
            raise ValueError(f"feature dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.clip = clip
        self.store = FeatureStore(cache_dir) if cache_dir is not None else None
        self.dtype = dtype
        self.batch_size = batch_size or extraction_batch_size(clip.device)
        self.progress = progress
        self.num_workers = num_workers if num_workers is not None else (
            min(8, os.cpu_count() or 1) if clip.device.type == "cuda" else 0)
        self._memo: dict[str, torch.Tensor] = {}
        self.log: Optional[Callable[[str], None]] = None  # told when a store entry is discarded
        self._augment: Optional[AugmentedView] = None

    @classmethod
    def from_config(cls, clip: FrozenCLIP, features, progress: Optional[Callable] = None,
                    log: Optional[Callable[[str], None]] = None) -> "FeatureExtractor":
        """The extractor a run's ``features:`` section asks for.

        ``cache: false`` keeps features in memory only; ``cache_dir: null`` means
        :func:`default_cache_dir`. On CUDA this also allows TF32 matmuls. The store
        folder is checked (:meth:`FeatureStore.check`) and swept of stale temporary files.

        Args:
            log: where a discarded (garbled, mismatched) store entry is reported.
        """
        if clip.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32: the encoders are frozen, features need no more
        cache_dir = (features.cache_dir or default_cache_dir()) if features.cache else None
        extractor = cls(clip, cache_dir=cache_dir, dtype=features.dtype, progress=progress)
        extractor.log = log
        if extractor.store is not None:
            extractor.store.check()
            extractor.store.sweep_temporaries()
        return extractor

    # -- keys ----------------------------------------------------------------
    def transform(self, view: Optional[int] = None):
        """The transform of the centre crop (``view=None``) or of augmented views."""
        if view is None:
            return self.clip.preprocess
        if self._augment is None:
            self._augment = AugmentedView.for_clip(self.clip)
        return self._augment

    def key(self, samples: Samples, view: Optional[int] = None) -> str:
        """The full text of a store key; any change in it is a different entry."""
        weights = self.clip.identity
        if self.clip.pretrained == "none":
            # random weights are only as fixed as the init code that draws them
            import open_clip

            weights += f" (open_clip {open_clip.__version__}, torch {torch.__version__.split('+')[0]})"
        return "\n".join([
            STORE_FORMAT,
            f"arch: {self.clip.arch}",
            f"weights: {weights}",
            f"images: {samples.identity} (n={len(samples)})",
            f"transform: {transform_identity(self.transform(view))}",
            f"view: {'center' if view is None else int(view)}",
            f"dim: {self.clip.embed_dim}",
            f"dtype: {self.dtype}",
        ])

    # -- features ------------------------------------------------------------
    def features(self, samples: Samples, view: Optional[int] = None, desc: str = "features") -> torch.Tensor:
        """``[N, D]`` CPU tensor (the store's dtype) of image features, not normalised.

        Args:
            samples: the images.
            view: None for the centre crop; ``v >= 0`` for augmented view v.
            desc: the progress bar's label.
        """
        k = self.key(samples, view)
        if k not in self._memo:
            self._memo[k] = self._load_or_extract(k, samples, view, desc)
        return self._memo[k]

    def forget(self) -> None:
        """Drop the features held in memory (the on-disk store keeps them): a process that only fills
        the store, one view after another, need not hold them all."""
        self._memo.clear()

    def _load_or_extract(self, key: str, samples: Samples, view: Optional[int], desc: str) -> torch.Tensor:
        shape = (len(samples), self.clip.embed_dim)
        if self.store is None:
            out = np.empty(shape, dtype=self.dtype)
            self._extract(samples, view, out, desc)
            return torch.from_numpy(out)
        arr = self.store.load(key, shape, self.dtype, discard=False)  # no lock: a valid entry never changes
        if arr is None:
            # One process computes, the others wait here and then read what it wrote.
            with self.store.locked(key):
                arr = self.store.load(key, shape, self.dtype)
                if arr is None:
                    with self.store.writer(key, shape, self.dtype) as out:
                        self._extract(samples, view, out, desc)
                    arr = self.store.load(key, shape, self.dtype)
            if arr is None:  # pragma: no cover - a store folder that loses files as we write
                raise OSError(f"feature store {self.store.root}: an entry vanished right after it was written")
        while self.store.discarded:
            line = self.store.discarded.pop(0)
            if self.log is not None:
                self.log(line)
        return torch.from_numpy(arr)

    @torch.no_grad()
    def _extract(self, samples: Samples, view: Optional[int], out: np.ndarray, desc: str) -> None:
        reader = ImageReader(samples, self.clip.preprocess) if view is None else \
            ViewReader(samples, self.transform(view), view)
        device = self.clip.device
        # Its own generator: a loader draws a seed when iterated, and the global stream must not
        # depend on whether features came from the store or were computed.
        loader = torch.utils.data.DataLoader(_Checked(reader), batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers, pin_memory=device.type == "cuda",
                                             collate_fn=_collate_checked, generator=torch.Generator())
        batches = loader if self.progress is None else self.progress(loader, len(loader), desc)
        row = 0
        for x in batches:
            if isinstance(x, str):  # an image that cannot be decoded: its one-line message (from a worker too)
                raise ImageError(x)
            with autocast(device):
                f = self.clip.encode_images(x.to(device, non_blocking=True))
            out[row: row + len(f)] = f.float().cpu().numpy()
            row += len(f)


# ---------------------------------------------------------------------------
# training views, one per epoch
# ---------------------------------------------------------------------------

def draw_view(seed: int, experience: int, epoch: int, n_views: int) -> int:
    """The augmented view used in ``epoch`` of ``experience``: every view once per V epochs,
    in an order drawn from the run's seed (so consecutive epochs differ when V > 1)."""
    cycle, pos = divmod(epoch, n_views)
    order = np.random.default_rng([seed % 2**32, experience, cycle]).permutation(n_views)
    return int(order[pos])


class ViewSchedule:
    """Which augmented view training reads now; shared by the training reader and its plugin."""

    def __init__(self):
        self.view = 0


class TrainViewPlugin(SupervisedPlugin):
    """Before each training epoch, point the shared :class:`ViewSchedule` at that epoch's view."""

    def __init__(self, schedule: ViewSchedule, n_views: int, seed: int):
        super().__init__()
        self.schedule = schedule
        self.n_views = n_views
        self.seed = seed

    def before_training_epoch(self, strategy, **kwargs):
        self.schedule.view = draw_view(self.seed, strategy.experience.current_experience,
                                       strategy.clock.train_exp_epochs, self.n_views)
