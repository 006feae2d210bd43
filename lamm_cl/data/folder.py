"""Any ``root/train/<class>/*`` + ``root/test/<class>/*`` image tree (torchvision's ImageFolder layout)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lamm_cl.data.registry import register_dataset
from lamm_cl.data.base import DatasetParts, FileSamples
from lamm_cl.errors import DataNotFoundError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEMPLATE = "a photo of a {}."


def readable(name: str) -> str:
    """Turn a folder or label name into prompt text: ``aquarium_fish`` -> ``aquarium fish``."""
    return " ".join(name.replace("_", " ").split())


def is_image(name: str) -> bool:
    """True when ``name`` ends in one of :data:`IMAGE_EXTENSIONS`, in any letter case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, following links), in sorted order.

    Hidden files and folders (a leading ``.``) are skipped; sorting makes the
    order, and so the dataset's identity, independent of the file system.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and is_image(f))
    return found


def class_folders(split_dir: Path) -> list[str]:
    """The sub-folder names of ``split_dir`` (hidden ones skipped), sorted."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _read_split(root: Path, split: str, folders: list[str]) -> FileSamples:
    split_dir = root / split
    paths: list[Path] = []
    labels: list[int] = []
    h = hashlib.sha1()
    for label, folder in enumerate(folders):
        images = list_images(split_dir / folder)
        if not images:
            raise DataNotFoundError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in {split_dir / folder}")
        for p in images:
            st = p.stat()
            # The path relative to root plus size and mtime: another tree with the
            # same file names, or an edited file, gets a different identity.
            h.update(f"{p.relative_to(root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        paths.extend(images)
        labels.extend([label] * len(images))
    return FileSamples(paths, labels, f"imagefolder:{root.resolve()}:{split}:{h.hexdigest()[:16]}")


@register_dataset("imagefolder")
def load_imagefolder(root: Path, download: bool) -> DatasetParts:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*``; ``download`` is ignored.

    Classes are the sorted folder names of ``train/`` (label i is the i-th
    folder); their names are the folder names with ``_`` read as a space.
    ``test/`` must hold exactly the same class folders.

    Raises:
        DataNotFoundError: ``train/`` or ``test/`` is missing, or a class folder has no images.
        UserError: the class folders of ``train/`` and ``test/`` differ.
    """
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataNotFoundError(
                f"imagefolder: folder not found: {root / split}; expected {root}/train/<class>/* and "
                f"{root}/test/<class>/* (set benchmark.root to the folder holding train/ and test/)"
            )
    train_classes = class_folders(root / "train")
    test_classes = class_folders(root / "test")
    if not train_classes:
        raise DataNotFoundError(f"imagefolder: no class folders in {root / 'train'}")
    nameless = [c for c in train_classes if not readable(c)]
    if nameless:  # e.g. "___": nothing is left once "_" are read as spaces, and a prompt needs a name
        raise UserError(f"imagefolder: class folder {root / 'train' / nameless[0]} gives an empty class name "
                        "(its name is only '_' and spaces); rename it")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise UserError(
            f"imagefolder: train and test class folders differ under {root}: "
            f"only in train/: {only_train or 'none'}; only in test/: {only_test or 'none'}"
        )
    return DatasetParts(
        name="imagefolder",
        classnames=[readable(c) for c in train_classes],
        train=_read_split(root, "train", train_classes),
        test=_read_split(root, "test", train_classes),
        template=TEMPLATE,
    )


def read_classnames(path: Path) -> dict[str, str]:
    """``wnid -> name`` from a ``classnames.txt`` of ``<wnid> <name>`` lines (ImageNet's, as CoOp ships it),
    in the file's order."""
    out: dict[str, str] = {}
    for ln in path.read_text().splitlines():
        wnid, _, name = ln.strip().partition(" ")
        if wnid:
            out[wnid] = name.strip()
    return out


def one_line(e: BaseException) -> str:
    """An exception's message on one line (a loader's error names it inside its own one-line message)."""
    return " ".join(str(e).split()) or type(e).__name__
