"""MNIST through torchvision (MTIL and X-TAIL both use it), kept as the in-memory uint8 array torchvision reads."""
from __future__ import annotations

from pathlib import Path

from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.data.folder import one_line
from lamm_cl.data.registry import register_dataset
from lamm_cl.errors import DataNotFoundError

FOLDER = "MNIST"  # what torchvision keeps under root: MNIST/raw/*-ubyte(.gz)
# CLIP's own MNIST prompt (openai/CLIP data/prompts.md, MNIST)
TEMPLATE = 'a photo of the number: "{}".'
CLASSNAMES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]


@register_dataset("mnist")
def load_mnist(root: Path, download: bool) -> DatasetParts:
    """Load MNIST (60,000 train / 10,000 test 28x28 grey digits, 10 classes) from ``root/MNIST``.

    torchvision reads the files; with ``download`` it fetches them first if they are missing. Class names
    are the digits "0" .. "9", as ZSCL's and CLIP's MNIST prompts name them.

    Raises:
        DataNotFoundError: the files are missing or corrupt, or the download failed.
    """
    from torchvision.datasets import MNIST

    folder = root / FOLDER
    if not download and not folder.is_dir():
        raise DataNotFoundError(f"mnist: no {FOLDER}/ folder in {root}; set download: true to fetch it, or put "
                                f"torchvision's MNIST/raw/ files there")
    parts = {}
    for split in ("train", "test"):
        try:
            parts[split] = MNIST(str(root), train=split == "train", download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found" (files missing or unreadable)
            raise DataNotFoundError(f"mnist: files missing or corrupted in {folder} ({one_line(e)}); delete the "
                                    "folder and set download: true to fetch it again") from e
        except OSError as e:  # no network, disk full, permission denied ...
            raise DataNotFoundError(f"mnist: download to {root} failed ({one_line(e)}); without network access, "
                                    f"put MNIST/raw/ in {root} and set download: false") from e
    train, test = parts["train"], parts["test"]
    return DatasetParts(
        name="mnist",
        classnames=list(CLASSNAMES),
        train=ArraySamples(train.data.numpy(), train.targets.numpy(), "mnist:train"),
        test=ArraySamples(test.data.numpy(), test.targets.numpy(), "mnist:test"),
        template=TEMPLATE,
    )
