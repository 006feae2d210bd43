"""A results folder's checks before a run writes to it: not in use, a writable folder, empty unless asked.

Nothing here writes; the folder's lock itself is :func:`lamm_cl.safe_io.lock_output`.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from lamm_cl.errors import UserError
from lamm_cl.safe_io import LOCK_FILE, check_creatable, in_use, lock_holder, name_max


def check_empty(out: Path) -> None:
    """Refuse a results folder that holds anything but the lock (without ``--resume``/``--overwrite``).

    Raises:
        UserError: one line saying what to do.
    """
    out = Path(out)
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if entries:
        raise UserError(f"{out} is not empty; add --resume to continue the runs there, --overwrite to replace "
                        "them, or choose another --output")


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a results folder before any work: in use, not a folder, not writable, or not empty.

    Nothing is written. A non-empty folder is accepted only with ``resume`` or ``overwrite``.

    Raises:
        UserError: one line saying what is wrong and what to do.
    """
    out = Path(out)
    try:
        os.stat(out)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            long = max(out.parts, key=len)
            raise UserError(f"{out}: the folder name {long[:40]}... ({len(os.fsencode(long))} bytes) is longer than "
                            "the filesystem allows; choose a shorter name or --output") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --output")
    holder = lock_holder(out) if out.is_dir() else None
    if holder is not None:
        raise in_use(out, holder)
    probe = check_creatable(out, str(out), "choose another --output")
    too_long = next((part for part in out.parts if len(os.fsencode(part)) > name_max(probe)), None)
    if too_long is not None:
        raise UserError(f"{out}: the folder name {too_long[:40]}... is longer than the filesystem allows "
                        f"({name_max(probe)} bytes); choose a shorter name or --output")
    if not (resume or overwrite):
        check_empty(out)  # and again under the lock: another run may fill it meanwhile
