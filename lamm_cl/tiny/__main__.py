"""``python -m lamm_cl.tiny pretrain --out FILE``: train lamm-tiny on tinyworld from scratch."""
from __future__ import annotations

import argparse
import sys
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
    if args.out.is_dir():
        print(f"--out: {args.out} is a folder; give a file name", file=sys.stderr)
        return 2
    start = time.monotonic()
    data = pretrain(PretrainSettings(epochs=args.epochs))
    atomic_write_bytes(args.out, data)
    print(f"wrote {args.out} ({len(data) / 2**20:.1f} MiB, sha256 {sha256(data)}) in "
          f"{time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
