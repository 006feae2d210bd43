"""File safety, in one place: atomic writes, temporary names and their sweeping, pid liveness, locks.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` write a file so that a reader sees the old
  bytes or the new ones, never a mix: a temporary name in the same folder (:func:`temp_name`,
  ``.<name>.<pid>.<hex>.tmp``, the one scheme every writer uses), fsync, rename, fsync of the folder.
* :func:`remove_stale_temporaries` and :func:`sweep_temporaries` delete the temporary files a killed
  writer left (the feature store sweeps its own, under its entries' locks, by the same names).
* :func:`pid_alive` says whether a process of this host still runs; :func:`process_start` /
  :func:`process_is` whether it is still the same process (pid and start time, so that a reused pid,
  or a state file from before a reboot, is not taken for its writer).
* The results-folder lock (:func:`lock_output`, :func:`lock_holder`, :func:`in_use`) is a file holding
  the owner's pid and host, held with :func:`fcntl.flock` for the whole run: the kernel decides who
  holds it (atomically, and it lets go when the process dies), and every look at the pid happens under
  the flock, so two processes can never both take it. A lock file whose pid is no longer alive is
  taken over. :func:`lock_run` is the per-run lock that ``lamm-cl run`` and a sweep job both take.
  :func:`open_lock` / :func:`take_lock` are the bare flock a feature-store entry waits on.
* :func:`file_sha256`: a file's checksum, read in chunks.

Nothing here imports torch (``lamm-cl sweep --status`` reads job states through it).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, Optional, Union

from lamm_cl.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: files are still published atomically, just not locked
    fcntl = None

PathLike = Union[str, "os.PathLike[str]"]

LOCK_FILE = ".lamm-cl.lock"
LOCKING = fcntl is not None  # whether this platform has flock
_CHUNK = 16 << 20


# --------------------------------------------------------------------------- temporary names


TEMPORARY = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]+\.tmp$")  # what temp_name gives: (final name, writer's pid)


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<pid>.<hex>.tmp`` (hidden, and naming its writer)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def temporaries_of(path: Path) -> list[Path]:
    """The temporary files :func:`temp_name` may have left beside ``path``."""
    path = Path(path)
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def remove_files(*paths: Path) -> None:
    """Delete each of ``paths`` that exists."""
    for p in paths:
        with suppress(FileNotFoundError):
            Path(p).unlink()


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files (``.<name>.<pid>.<hex>.tmp``) a killed writer left in ``folder``."""
    remove_files(*Path(folder).glob(".*.tmp"))


def sweep_temporaries(folder: Path, before: float) -> list[Path]:
    """Delete temporary files (``.<name>.<pid>.<hex>.tmp``) in ``folder`` that are older than ``before``
    and whose writer is not alive on this host (e.g. a killed ``lamm-cl report``). Returns those deleted."""
    gone = []
    try:
        found = [p for p in Path(folder).iterdir() if TEMPORARY.match(p.name)]
    except OSError:
        return gone
    for p in found:
        pid = int(TEMPORARY.match(p.name).group(2))
        try:
            if p.stat().st_mtime >= before or (pid != os.getpid() and pid_alive(pid)):
                continue
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same folder (same filesystem, so
    the rename is atomic), are flushed and fsynced, and the file is renamed
    over ``path`` with :func:`os.replace`. On any error the temporary file is
    removed. Parent folders are created. Returns ``path`` as a :class:`Path`.

    Raises:
        WriteError: the file cannot be written (one line naming it).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 lets the umask decide the mode, like a plain open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise _unwritable(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _unwritable(path, e) from None
        raise
    fsync_dir(path.parent)
    return path


class WriteError(UserError, OSError):
    """A result file could not be written (full disk, read-only folder, a file where a folder goes).

    A :class:`UserError` (one line, exit status 2) that callers catching ``OSError`` still catch.
    """


def _unwritable(path: Path, e: OSError) -> WriteError:
    """A failed write as one line naming the file: a full disk, a read-only folder, a file where a folder goes."""
    why = e.strerror or str(e)
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; free space there (finished runs are kept: continue with --resume)"
    elif isinstance(e, (FileExistsError, NotADirectoryError)):
        folder = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        return WriteError(f"{path}: cannot write it because {folder} is a file, not a folder; move that file away")
    return WriteError(f"{path}: cannot write it ({why}){hint}")


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text; newlines are written as given (no platform translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return True
    return True


def process_start(pid: int) -> Optional[str]:
    """An identity of process ``pid`` that a later process with the same pid does not share: the boot id and
    the process's start time in clock ticks since boot (``/proc/<pid>/stat``, field 22), as ``"BOOT:TICKS"``.

    None where it cannot be read: no ``/proc`` (not Linux), or no such process.
    """
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text(encoding="ascii", errors="replace")
        # the command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'
        start = stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        boot = "?"
    return f"{boot}:{start}"


def process_is(pid: object, start: object) -> bool:
    """Whether the process that recorded ``pid`` and ``start`` (:func:`process_start`, on this host) still runs.

    A pid that is not a positive integer, a pid now used by another process (another start time, or
    another boot), or a dead pid is not. Where start times cannot be read (``start`` None and no ``/proc``),
    a live pid is taken at its word.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    now = process_start(pid)
    if start is not None or now is not None:
        return now is not None and now == start
    return pid_alive(pid)


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the filesystem of ``folder`` allows (255 when it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


# --------------------------------------------------------------------------- locks


def open_lock(path: Path) -> int:
    """Open (creating it) the lock file ``path``; lock files are kept: deleting them races with their waiters.

    Raises:
        OSError: it cannot be opened or created.
    """
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def take_lock(fd: int, wait: bool = True) -> bool:
    """Take the exclusive flock of the open file ``fd``: wait for it, or (``wait=False``) return False at once
    when another process holds it. Closing ``fd`` (or the process ending) lets it go."""
    if not wait:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def lock_holder(out: Path) -> Optional[str]:
    """Who holds the lock on ``out`` (``"pid N on HOST"``), or None when it is free or stale."""
    lock = Path(out) / LOCK_FILE
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return f"an unreadable lock {lock}"
    parts = text.split()
    try:
        pid = int(parts[0])
    except (IndexError, ValueError):
        return None  # half-written or garbage: nobody can be holding it meaningfully
    host = parts[1] if len(parts) > 1 else socket.gethostname()
    if host != socket.gethostname():
        return f"pid {pid} on {host}"  # cannot check another machine's processes
    if pid == os.getpid() or pid_alive(pid):
        return f"pid {pid}"
    return None


class InUseError(UserError):
    """A results folder or run folder that another live process holds (its lock); nothing was written."""


def in_use(out: Path, holder: str) -> InUseError:
    """The error for a results folder (or run folder) another live process holds."""
    return InUseError(f"{out} is in use by another lamm-cl run ({holder}); wait for it to finish or choose "
                     f"another --output (if no run is using it, delete {Path(out) / LOCK_FILE})")


@contextmanager
def lock_output(out: Path) -> Iterator[Path]:
    """Hold the lock on results folder ``out`` (created if needed) for the duration of the block.

    Raises:
        UserError: another live process holds it, or the folder cannot be created or written.
    """
    import fcntl

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the results folder ({e.strerror or e})") from None
    lock = out / LOCK_FILE
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{out}: cannot write there ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise in_use(out, lock_holder(out) or "another process") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder deleted it as we opened it: take the new file
            os.close(fd)
            continue
        # The flock is ours, so nobody else looks at the pid now. A live pid is a holder that
        # does not flock (or one on another host); a dead one is a stale lock, taken over.
        holder = lock_holder(out)
        if holder is not None and holder != f"pid {os.getpid()}":
            os.close(fd)
            raise in_use(out, holder)
        try:
            os.ftruncate(fd, 0)
            data, done = mine.encode(), 0
            while done < len(data):  # a nearly full disk writes short before it fails
                done += os.pwrite(fd, data[done:], done)
        except OSError as e:
            with suppress(OSError):
                lock.unlink()  # ours (we hold the flock) and empty: leave nothing behind
            os.close(fd)
            raise UserError(f"{out}: cannot write there ({e.strerror or e}); free space or choose another "
                            "--output") from None
        break
    else:  # pragma: no cover - the file kept vanishing under us
        raise in_use(out, "another process")
    try:
        yield lock
    finally:
        try:
            if lock.read_text(encoding="utf-8") == mine:
                lock.unlink()  # while still holding the flock: a waiter then sees another inode and retries
        except OSError:
            pass
        os.close(fd)


@contextmanager
def lock_run(run_dir: Path) -> Iterator[Path]:
    """Hold the per-run lock of ``<results>/<strategy>/seed<k>`` for the duration of the block.

    The one lock a ``lamm-cl run`` (which also holds its whole results folder) and a sweep job (which holds
    only its run folder, so that jobs of one benchmark run side by side) both take for each run they
    write. Taken first, then the results folder's own lock is looked at: a run whose folder another
    process holds is refused, whichever of the two came first.

    Raises:
        InUseError: another live process holds the run folder or its results folder.
        UserError: the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    with lock_output(run_dir) as lock:
        results = run_dir.parent.parent
        holder = lock_holder(results)
        if holder is not None and holder != f"pid {os.getpid()}":
            raise in_use(results, holder)
        yield lock


def check_creatable(folder: Path, name: str, hint: str) -> Path:
    """Refuse a folder that cannot be made or written: its nearest existing ancestor is a file or not
    writable. ``name`` starts the one-line message, ``hint`` ends it (what to choose instead).

    Returns:
        The nearest existing ancestor (``folder`` itself when it exists).

    Raises:
        UserError: one line naming the folder and the ancestor in the way.
    """
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{name}: cannot be created because {probe} is not a folder; {hint}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{name}: cannot write there ({os.strerror(errno.EACCES).lower()} on {probe}); {hint}")
    return probe
