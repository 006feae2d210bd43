"""ImageNet's evaluation-only variants: ImageNet-V2, -Sketch, -A and -R, in the layout of CoOp's DATASETS.md.

They hold test images only (CoOp, LAMM and MaPLe train on ImageNet and evaluate on them: domain
generalization). Each folder carries a copy of ImageNet's ``classnames.txt`` (``<wnid> <name>`` lines,
CoOp's copy of CLIP's names), as CoOp's readers expect (KaiyangZhou/CoOp ``datasets/imagenetv2.py:24``,
``imagenet_sketch.py:21``, ``imagenet_a.py:24``, ``imagenet_r.py:24``: ``<dataset_dir>/classnames.txt``):

- ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``: folder i holds class i of
  ``classnames.txt`` in the file's order (``imagenetv2.py:31-37``);
- ``imagenet-sketch/images/<wnid>/``: 1,000 classes (``imagenet_sketch.py:19-20``);
- ``imagenet-adversarial/imagenet-a/<wnid>/`` and ``imagenet-rendition/imagenet-r/<wnid>/``: 200 of the
  1,000 classes each (``imagenet_a.py:19-22``; its ``README.txt`` beside the folders is skipped).

Labels follow the sorted wnid folders (V2: the file's order), as in CoOp. Every class keeps its wnid
(:attr:`DatasetParts.class_keys`), so a run trained on ImageNet scores A and R among their own 200
classes with the trained classes' text (LAMM's label vectors) -- matched by wnid, not by name.
The train part is empty: these sets are never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lamm_cl.data.base import DatasetParts, FileSamples, files_identity
from lamm_cl.data.folder import class_folders, list_images, read_classnames, readable
from lamm_cl.data.registry import register_dataset
from lamm_cl.errors import DataNotFoundError, UserError

HOW_TO_GET = "see CoOp's DATASETS.md (ImageNetV2, ImageNet-Sketch, ImageNet-A, ImageNet-R) for the layout"
TEMPLATE = "a photo of a {}."  # CoOp's trainers/zsclip.py CUSTOM_TEMPLATES for all four


@dataclass(frozen=True)
class VariantSpec:
    """Where a variant lives under ``root``: its folder, the image folder inside it, and whether the
    class folders are numbered by ``classnames.txt``'s order (V2) or named by wnid."""

    name: str
    folder: str
    image_dir: str
    numbered: bool = False


VARIANTS: dict[str, VariantSpec] = {s.name: s for s in (
    VariantSpec("imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val", numbered=True),
    VariantSpec("imagenet_sketch", "imagenet-sketch", "images"),
    VariantSpec("imagenet_a", "imagenet-adversarial", "imagenet-a"),
    VariantSpec("imagenet_r", "imagenet-rendition", "imagenet-r"),
)}


def _missing(spec: VariantSpec, what: str, path: Path) -> DataNotFoundError:
    return DataNotFoundError(f"{spec.name}: {what} not found: {path}; {HOW_TO_GET}")


def load_variant(spec: VariantSpec, root: Path) -> DatasetParts:
    """Load one variant (see the module's docstring for the layout).

    Raises:
        DataNotFoundError: the folder, ``classnames.txt``, the image folder or its class folders are missing.
        UserError: a class folder names a wnid (or, for V2, a number) that ``classnames.txt`` lacks.
    """
    folder = root / spec.folder
    names_path = folder / "classnames.txt"
    image_dir = folder / spec.image_dir
    if not folder.is_dir():
        raise _missing(spec, "dataset folder", folder)
    if not names_path.is_file():
        raise _missing(spec, "class-name file (a copy of ImageNet's classnames.txt)", names_path)
    if not image_dir.is_dir():
        raise _missing(spec, "image folder", image_dir)
    wnid_name = read_classnames(names_path)
    folders = class_folders(image_dir)
    if not folders:
        raise _missing(spec, "class folders", image_dir)
    if spec.numbered:
        ordered = list(wnid_name)
        bad = [f for f in folders if not f.isdigit() or int(f) >= len(ordered)]
        if bad:
            raise UserError(f"{spec.name}: class folder {image_dir / bad[0]} is not a class number 0..{len(ordered) - 1} "
                            f"of {names_path}")
        folders = sorted(folders, key=int)
        wnids = [ordered[int(f)] for f in folders]
    else:
        unnamed = [f for f in folders if f not in wnid_name]
        if unnamed:
            raise UserError(f"{spec.name}: {names_path} has no name for {len(unnamed)} class folders of {image_dir}, "
                            f"e.g. {unnamed[:3]}")
        wnids = folders
    paths, labels = [], []
    for label, sub in enumerate(folders):
        images = list_images(image_dir / sub)
        paths.extend(images)
        labels.extend([label] * len(images))
    if not paths:
        raise _missing(spec, "images", image_dir)
    cut = len(str(image_dir)) + 1
    digest = files_identity((str(p)[cut:], p) for p in paths)
    test = FileSamples(paths, labels, f"{spec.name}:test:{digest}")
    train = FileSamples([], [], f"{spec.name}:train:none")  # evaluation only
    return DatasetParts(spec.name, [readable(wnid_name[w]) for w in wnids], train, test, TEMPLATE,
                        class_keys=list(wnids))


def _loader(spec: VariantSpec):
    def load(root: Path, download: bool) -> DatasetParts:
        return load_variant(spec, root)

    load.__name__ = f"load_{spec.name}"
    load.__doc__ = (f"Load {spec.name} (test images only) from ``root/{spec.folder}/{spec.image_dir}`` and "
                    f"``root/{spec.folder}/classnames.txt`` (CoOp layout); ``download`` cannot fetch it.")
    return load


for _spec in VARIANTS.values():
    register_dataset(_spec.name)(_loader(_spec))

EVALUATION_ONLY = frozenset(VARIANTS)  # datasets with no training images: targets, never a trained benchmark
