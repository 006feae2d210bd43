"""``python -m lamm_cl.tiny pretrain --out FILE``: train lamm-tiny on tinyworld from scratch."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lamm_cl.safe_io import atomic_write_bytes
from lamm_cl.tiny.pretrain import PretrainSettings, pretrain, sha256


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m lamm_cl.tiny",
                                     description="The tiny captioned world and the CLIP pretrained on it.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train lamm-tiny from scratch on tinyworld (deterministic, CPU)")
    p.add_argument("--out", required=True, type=Path, help="where to write the half-precision weights")
    p.add_argument("--epochs", type=int, default=PretrainSettings.epochs,
                   help=f"passes over the scenes (default {PretrainSettings.epochs}, what made the shipped file)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        print(f"--epochs: expected 1 or more, got {args.epochs}", file=sys.stderr)
        return 2
    problem = check_out(args.out)
    if problem:
        print(f"--out: {problem}", file=sys.stderr)
        return 2
    start = time.monotonic()
    data = pretrain(PretrainSettings(epochs=args.epochs))
    try:
        atomic_write_bytes(args.out, data)  # on failure its temporary file is removed: no *.tmp is left
    except OSError as e:  # the folder filled up or went away while training: keep the weights elsewhere
        kept = Path(tempfile.gettempdir()) / f"lamm-tiny-{sha256(data)[:12]}.pt"
        try:
            atomic_write_bytes(kept, data)
        except OSError:
            print(f"--out: {' '.join(str(e).split())}; the weights are lost", file=sys.stderr)
            return 1
        print(f"--out: {' '.join(str(e).split())}; the weights were written to {kept} instead", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(data) / 2**20:.1f} MiB, sha256 {sha256(data)}) in "
          f"{time.monotonic() - start:.0f} s")
    return 0


WEIGHTS_BYTES = 7 << 20  # the half-precision weights (6.5 MiB shipped), with room to spare


def check_out(out: Path) -> str:
    """Why the weights could not be written to ``out`` after training ('' when they can): checked before
    minutes of training. Its folder must exist, be writable and have :data:`WEIGHTS_BYTES` free."""
    out = Path(out)
    if out.is_dir():
        return f"{out} is a folder; give a file name"
    folder = out.parent
    if not folder.is_dir():
        return f"{folder} is not a folder; create it first or give another path"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in {folder} (permission denied); give another path"
    if out.exists() and not os.access(out, os.W_OK) and not os.access(folder, os.W_OK):
        return f"{out} cannot be replaced; give another path"
    try:
        free = shutil.disk_usage(folder).free
    except OSError as e:
        return f"cannot tell the free space in {folder} ({e.strerror or e})"
    if free < WEIGHTS_BYTES:
        return (f"{folder} has {free / 2**20:.1f} MiB free; the weights need {WEIGHTS_BYTES / 2**20:.0f} MiB: "
                "free some space or give another path")
    return ""


if __name__ == "__main__":
    sys.exit(main())
