"""The 11 datasets of the CoOp few-shot protocol, read from the folders CoOp users already have.

The layout is the one in CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp):
nine datasets come with a fixed split file ``split_zhou_<Name>.json`` whose
``train``/``val``/``test`` lists hold ``[relative_image_path, label, classname]``;
FGVC-Aircraft uses its own ``images_variant_*.txt`` lists and ImageNet its
``images/{train,val}/<wnid>/`` folders plus CoOp's ``classnames.txt``.

A dataset's identity in the feature store covers its split file and the relative path,
size and modification time of every listed image (:func:`lamm_cl.data.base.files_identity`,
stat only), so replacing an image behind an unchanged split file is not served old features.

As in CoOp, training uses the split's ``train`` list (the ``val`` list is not
used) and evaluation its ``test`` list; ImageNet is evaluated on its val set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lamm_cl.data.registry import register_dataset
from lamm_cl.data.base import DatasetParts, FileSamples, files_identity
from lamm_cl.data.folder import class_folders, list_images, read_classnames, readable
from lamm_cl.errors import DataNotFoundError, UserError

HOW_TO_GET = "see CoOp's DATASETS.md for the layout; the README section 'Datasets' lists it"


@dataclass(frozen=True)
class SplitFileSpec:
    """Where a split-file dataset lives under ``root`` and how CoOp prompts for it.

    Attributes:
        name: the YAML name (``benchmark.dataset``).
        folder: the dataset's folder under ``root``.
        image_dir: the folder (under ``folder``) the split file's paths are relative to; ``""``: ``folder`` itself.
        split_file: the split file's name inside ``folder``.
        template: CoOp's hand-made prompt for the dataset.
        ignored: raw class names CoOp leaves out of the dataset.
        renamed: raw class name -> the readable name CoOp gives it.
    """

    name: str
    folder: str
    image_dir: str
    split_file: str
    template: str
    ignored: tuple[str, ...] = ()
    renamed: dict[str, str] = field(default_factory=dict)


# Folder names, split files and templates as in CoOp's DATASETS.md, datasets/*.py and
# trainers/zsclip.py (CUSTOM_TEMPLATES). CoOp's published split files already carry the
# renamed class names and lack the ignored classes; applying both again is a no-op
# for them and makes a split file regenerated from the raw folders read the same.
SPLIT_FILE_DATASETS: dict[str, SplitFileSpec] = {s.name: s for s in (
    SplitFileSpec(
        "caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}.",
        ignored=("BACKGROUND_Google", "Faces_easy"),
        renamed={"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"},
    ),
    SplitFileSpec("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
                  "a photo of a {}, a type of pet."),
    # Stanford Cars' paths (cars_train/..., cars_test/...) are relative to the dataset folder itself.
    SplitFileSpec("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    SplitFileSpec("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                  "a photo of a {}, a type of flower."),
    SplitFileSpec("food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    SplitFileSpec("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    SplitFileSpec("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    SplitFileSpec(
        "eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
        renamed={
            "AnnualCrop": "Annual Crop Land", "Forest": "Forest",
            "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
            "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
            "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
            "River": "River", "SeaLake": "Sea or Lake",
        },
    ),
    SplitFileSpec("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                  "a photo of a person doing {}."),
)}

FGVC_TEMPLATE = "a photo of a {}, a type of aircraft."
IMAGENET_TEMPLATE = "a photo of a {}."


def _missing(name: str, what: str, path: Path, download: bool) -> DataNotFoundError:
    note = " (benchmark.download cannot fetch this dataset)" if download else ""
    return DataNotFoundError(f"{name}: {what} not found: {path}; {HOW_TO_GET}{note}")


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _images_identity(name: str, rel_paths: list[str], folder: Path, source: Path) -> str:
    """The stat digest of every listed image (:func:`files_identity`): a changed image changes the
    dataset's identity, and a missing one -- wherever it is listed -- is named before any work."""
    try:
        return files_identity(((rel, folder / rel) for rel in rel_paths), listed_in=source.name)
    except DataNotFoundError as e:
        raise DataNotFoundError(f"{name}: {e}; {HOW_TO_GET}") from None
    except UserError as e:
        raise UserError(f"{name}: {e}") from None


def _load_split_file(spec: SplitFileSpec, root: Path, download: bool) -> DatasetParts:
    folder = root / spec.folder
    split_path = folder / spec.split_file
    image_dir = folder / spec.image_dir if spec.image_dir else folder
    if not folder.is_dir():
        raise _missing(spec.name, "dataset folder", folder, download)
    if not split_path.is_file():
        raise _missing(spec.name, "split file", split_path, download)
    if not image_dir.is_dir():
        raise _missing(spec.name, "image folder", image_dir, download)

    raw = split_path.read_bytes()
    try:
        split = json.loads(raw)
        lists = {part: split[part] for part in ("train", "test")}
        rows = {part: [(str(p), int(y), str(c)) for p, y, c in items] for part, items in lists.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{spec.name}: {split_path} is not a CoOp split file (expected train/val/test lists of "
                        f"[image_path, label, classname]): {type(e).__name__}: {e}") from e

    # One name per label, taken from the file; ignored classes dropped; the labels
    # left are renumbered 0..n-1 in their original order.
    names: dict[int, str] = {}
    for items in rows.values():
        for _, y, c in items:
            if names.setdefault(y, c) != c:
                raise UserError(f"{spec.name}: {split_path} gives label {y} two class names: "
                                f"{names[y]!r} and {c!r}")
    kept = sorted(y for y, c in names.items() if c not in spec.ignored)
    relabel = {y: i for i, y in enumerate(kept)}
    classnames = [readable(spec.renamed.get(names[y], names[y])) for y in kept]

    digest = hashlib.sha1(raw).hexdigest()[:16]
    parts = {}
    for part, items in rows.items():
        items = [(p, y) for p, y, _ in items if y in relabel]
        images = _images_identity(spec.name, [p for p, _ in items], image_dir, split_path)
        parts[part] = FileSamples([image_dir / p for p, _ in items], [relabel[y] for _, y in items],
                                  f"{spec.name}:{part}:{split_path.name}:{digest}:{images}")
    return DatasetParts(spec.name, classnames, parts["train"], parts["test"], spec.template)


def _split_file_loader(spec: SplitFileSpec) -> Callable[[Path, bool], DatasetParts]:
    def load(root: Path, download: bool) -> DatasetParts:
        return _load_split_file(spec, root, download)

    load.__name__ = f"load_{spec.name}"
    images = f"root/{spec.folder}/{spec.image_dir}".rstrip("/")
    load.__doc__ = (f"Load {spec.name} from ``{images}`` and ``root/{spec.folder}/{spec.split_file}`` "
                    f"(CoOp layout); ``download`` cannot fetch it.")
    return load


for _spec in SPLIT_FILE_DATASETS.values():
    register_dataset(_spec.name)(_split_file_loader(_spec))


@register_dataset("fgvc_aircraft")
def load_fgvc_aircraft(root: Path, download: bool) -> DatasetParts:
    """Load FGVC-Aircraft (100 variants) from ``root/fgvc_aircraft`` (the archive's ``data/`` folder, renamed).

    Classes are the lines of ``variants.txt`` in order; ``images_variant_train.txt``
    and ``images_variant_test.txt`` hold ``<image id> <variant>`` lines, the
    images being ``images/<image id>.jpg``.

    Raises:
        DataNotFoundError: the folder, a list file or the images are missing.
        UserError: a list file names a variant that ``variants.txt`` lacks.
    """
    name = "fgvc_aircraft"
    folder = root / name
    if not folder.is_dir():
        raise _missing(name, "dataset folder", folder, download)
    variants_path = folder / "variants.txt"
    if not variants_path.is_file():
        raise _missing(name, "class list", variants_path, download)
    classnames = [ln.strip() for ln in variants_path.read_text().splitlines() if ln.strip()]
    label_of = {c: i for i, c in enumerate(classnames)}

    parts = {}
    for part in ("train", "test"):
        list_path = folder / f"images_variant_{part}.txt"
        if not list_path.is_file():
            raise _missing(name, "image list", list_path, download)
        paths, labels = [], []
        for ln in list_path.read_text().splitlines():
            if not ln.strip():
                continue
            image_id, _, variant = ln.strip().partition(" ")
            if variant not in label_of:
                raise UserError(f"{name}: {list_path} names variant {variant!r}, which {variants_path} lacks")
            paths.append(folder / "images" / f"{image_id}.jpg")
            labels.append(label_of[variant])
        images = _images_identity(name, [f"{p.name}" for p in paths], folder / "images", list_path)
        parts[part] = FileSamples(paths, labels, f"{name}:{part}:{_file_digest(variants_path, list_path)}:{images}")
    return DatasetParts(name, [readable(c) for c in classnames], parts["train"], parts["test"], FGVC_TEMPLATE)


@register_dataset("imagenet")
def load_imagenet(root: Path, download: bool) -> DatasetParts:
    """Load ImageNet-1k from ``root/imagenet/images/{train,val}/<wnid>/`` and ``root/imagenet/classnames.txt``.

    Label i is the i-th wnid folder of ``train/`` in sorted order; ``val/`` must
    be sorted into the same wnid folders and is the test set. ``classnames.txt``
    (CoOp's copy of CLIP's names) has one ``<wnid> <class name>`` line per class.

    Raises:
        DataNotFoundError: a folder or ``classnames.txt`` is missing.
        UserError: ``val/`` has other wnid folders than ``train/``, or a wnid has no name.
    """
    name = "imagenet"
    folder = root / name
    names_path = folder / "classnames.txt"
    for path, what in ((folder, "dataset folder"), (folder / "images" / "train", "train folder"),
                       (folder / "images" / "val", "val folder (sorted into <wnid>/ folders)")):
        if not path.is_dir():
            raise _missing(name, what, path, download)
    if not names_path.is_file():
        raise _missing(name, "class-name file", names_path, download)
    wnid_name = read_classnames(names_path)

    wnids = class_folders(folder / "images" / "train")
    val_wnids = class_folders(folder / "images" / "val")
    if not wnids:
        raise _missing(name, "class folders (<wnid>/)", folder / "images" / "train", download)
    if val_wnids != wnids:
        differ = sorted(set(wnids) ^ set(val_wnids))
        raise UserError(f"{name}: images/train and images/val hold different wnid folders under {folder} "
                        f"({len(differ)} differ, e.g. {differ[:3]}); val/ must be sorted into <wnid>/ folders")
    unnamed = [w for w in wnids if w not in wnid_name]
    if unnamed:
        raise UserError(f"{name}: {names_path} has no name for {len(unnamed)} wnid folders, e.g. {unnamed[:3]}")

    parts = {}
    for part, sub in (("train", "train"), ("test", "val")):
        split_dir = folder / "images" / sub
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            images = list_images(split_dir / wnid)
            paths.extend(images)
            labels.extend([label] * len(images))
        # relative path, size and mtime of every image (stat only): an edited or replaced image is another dataset
        cut = len(str(split_dir)) + 1
        digest = files_identity((str(p)[cut:], p) for p in paths)
        parts[part] = FileSamples(paths, labels, f"{name}:{part}:{digest}")
    classnames = [readable(wnid_name[w]) for w in wnids]
    return DatasetParts(name, classnames, parts["train"], parts["test"], IMAGENET_TEMPLATE, class_keys=list(wnids))
