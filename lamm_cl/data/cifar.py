"""CIFAR-100 through torchvision, kept as the in-memory uint8 array torchvision reads."""
from __future__ import annotations

from pathlib import Path

from lamm_cl.data.registry import register_dataset
from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.data.folder import one_line, readable
from lamm_cl.errors import DataNotFoundError

FOLDER = "cifar-100-python"  # what torchvision extracts the archive to, under root


@register_dataset("cifar100")
def load_cifar100(root: Path, download: bool) -> DatasetParts:
    """Load CIFAR-100 (50,000 train / 10,000 test images, 100 classes) from ``root/cifar-100-python``.

    torchvision reads and checksums the files; with ``download`` it fetches them
    first if they are missing. Class names are torchvision's fine labels with
    ``_`` read as a space (``aquarium_fish`` -> ``aquarium fish``).

    Raises:
        DataNotFoundError: the files are missing or corrupt, or the download failed.
    """
    from torchvision.datasets import CIFAR100

    folder = root / FOLDER
    if not download and not folder.is_dir():
        raise DataNotFoundError(
            f"cifar100: no {FOLDER}/ folder in {root}; set benchmark.download: true to fetch it, "
            f"or extract cifar-100-python.tar.gz there"
        )
    parts = {}
    for split in ("train", "test"):
        try:
            parts[split] = CIFAR100(str(root), train=split == "train", download=download)
        except RuntimeError as e:
            # torchvision's "Dataset not found or corrupted": files missing or a checksum mismatch.
            if download:
                raise DataNotFoundError(f"cifar100: could not download or verify CIFAR-100 in {folder}: "
                                        f"{one_line(e)}") from e
            raise DataNotFoundError(
                f"cifar100: files missing or corrupted in {folder} ({one_line(e)}); delete the folder and "
                f"set benchmark.download: true to fetch it again"
            ) from e
        except OSError as e:  # URLError, no network, disk full, permission denied ...
            raise DataNotFoundError(
                f"cifar100: download to {root} failed ({one_line(e)}); without network access, put "
                f"cifar-100-python/ (from cifar-100-python.tar.gz) in {root} and set benchmark.download: false"
            ) from e
    train, test = parts["train"], parts["test"]
    return DatasetParts(
        name="cifar100",
        classnames=[readable(c) for c in train.classes],
        train=ArraySamples(train.data, train.targets, "cifar100:train"),
        test=ArraySamples(test.data, test.targets, "cifar100:test"),
        template="a photo of a {}.",
    )
