"""The on-disk feature store: one checked, memory-mapped ``.npy`` entry per key, shared across processes.

The :class:`FeatureStore` keeps each key's ``[N, D]`` array on disk as a
memory-mapped ``.npy`` file beside a JSON file holding the key's full text and
the data file's SHA-256; an entry is read only when that text, the shape, the
dtype, the file size and the checksum all check out. Anything else -- a
half-written, truncated, garbled or mismatched entry -- is deleted and recomputed.

Several processes may share a store (a sweep's jobs): an entry is computed under
an exclusive file lock (``<hash>.lock``, :func:`lamm_cl.safe_io.take_lock`), so the
encoder runs once and the others wait, then read it. A valid entry is never
rewritten, so reading needs no lock (a read-only store that holds every entry
works). Space for an entry is reserved before it is written, so a full disk is one
clear error rather than a SIGBUS, and temporary files of killed writers are swept.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

from lamm_cl.errors import UserError
from lamm_cl.safe_io import LOCKING, TEMPORARY, file_sha256, open_lock, remove_files, take_lock, temp_name


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lamm-cl/features``, else ``~/.cache/lamm-cl/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lamm-cl" / "features"


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_CHUNK = 16 << 20


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
            remove_files(data, meta)
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
                if file_sha256(f) != info.get("sha256"):
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
        if not LOCKING:  # pragma: no cover
            yield
            return
        try:
            fd = open_lock(self.lock_path(key))
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            take_lock(fd)
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
        tmp_data, tmp_meta = temp_name(data), temp_name(meta)
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
            remove_files(tmp_data, tmp_meta)

    def sweep_temporaries(self, before: Optional[float] = None) -> list[Path]:
        """Delete temporary files that killed writers left: those older than ``before`` (default: now)
        whose entry no live process is writing (its lock is free). Returns the paths deleted."""
        if not LOCKING or not self.root.is_dir():
            return []
        before = time.time() if before is None else before
        gone = []
        try:
            stale = [p for p in self.root.iterdir() if TEMPORARY.match(p.name)]
        except OSError:
            return []
        for p in stale:
            entry = TEMPORARY.match(p.name).group(1)  # e.g. <hash>.npy
            lock = self.root / (entry.split(".", 1)[0] + ".lock")
            try:
                if p.stat().st_mtime >= before:
                    continue
                fd = open_lock(lock)
            except OSError:  # gone already, or a read-only store: leave it
                continue
            if not take_lock(fd, wait=False):
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
