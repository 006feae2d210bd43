"""Dataset loaders on miniature copies of each on-disk layout, generated into tmp folders (no network)."""
from __future__ import annotations

import json
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from lamm_cl.data.imagenet_variants import EVALUATION_ONLY
from lamm_cl.data import list_datasets, load_dataset
from lamm_cl.data.coop import SPLIT_FILE_DATASETS
from lamm_cl.data.orders import ICARL_CIFAR100_ORDER
from lamm_cl.errors import DataNotFoundError, UserError

from builders import N_TEST, N_TRAIN, N_VAL, SPLIT_CLASSES, make_imagefolder, make_split_file_dataset, write_image

FGVC_VARIANTS = ["707-320", "A300B4", "Cessna 172"]


def make_fgvc(root: Path) -> None:
    folder = root / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n")
    image_id = 1000000
    for part, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
        lines = []
        for variant in FGVC_VARIANTS:
            for _ in range(n):
                write_image(folder / "images" / f"{image_id}.jpg", image_id)
                lines.append(f"{image_id} {variant}")
                image_id += 1
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")


IMAGENET = {"n01443537": "goldfish", "n01440764": "tench", "n01484850": "great white shark"}


def make_imagenet(root: Path) -> None:
    folder = root / "imagenet"
    folder.mkdir(parents=True)
    # classnames.txt lists more classes than the folders hold, in CoOp's "<wnid> <name>" form
    lines = [f"{w} {n}" for w, n in IMAGENET.items()] + ["n01491361 tiger shark"]
    (folder / "classnames.txt").write_text("\n".join(lines) + "\n")
    for part, n in (("train", N_TRAIN), ("val", N_TEST)):
        for k, wnid in enumerate(IMAGENET):
            for i in range(n):
                write_image(folder / "images" / part / wnid / f"{wnid}_{i}.JPEG", 10 * k + i)


CIFAR_NAMES = ["apple", "aquarium_fish", "baby", "maple_tree"]


def make_cifar(root: Path) -> None:
    """A CIFAR-100 stand-in in torchvision's pickle format (4 classes, 3 train / 2 test images each)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = [c for c in range(len(CIFAR_NAMES)) for _ in range(n)]
        entry = {
            "data": rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8),
            "fine_labels": labels,
            "coarse_labels": [0] * len(labels),
            "filenames": [f"{i}.png" for i in range(len(labels))],
            "batch_label": part,
        }
        with open(folder / part, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["fruit"]}, f)


@pytest.fixture
def cifar_unchecked(monkeypatch):
    """Let torchvision read the stand-in: patch only its md5 check (to "the file exists") and forbid downloads."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", no_network)
    return tv_cifar


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One root holding every miniature dataset, built once for the module."""
    root = tmp_path_factory.mktemp("data")
    for name in SPLIT_FILE_DATASETS:
        make_split_file_dataset(root, name)
    make_fgvc(root)
    make_imagenet(root)
    make_imagefolder(root / "folder")
    make_cifar(root)
    return root


def assert_readable_images(samples, k: int = 2) -> None:
    for i in range(min(k, len(samples))):
        im = samples.image(i)
        assert im.mode == "RGB" and im.size[0] > 0


# --- CoOp split-file datasets ---------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPLIT_CLASSES))
def test_split_file_dataset_loads(data_root, name):
    parts = load_dataset(name, data_root)
    expected = [readable for _, readable in SPLIT_CLASSES[name] if readable is not None]
    assert parts.name == name
    assert parts.classnames == expected
    assert parts.template == SPLIT_FILE_DATASETS[name].template
    n = len(expected)
    assert len(parts.train) == n * N_TRAIN and len(parts.test) == n * N_TEST  # val is not used
    assert sorted(set(parts.train.labels.tolist())) == list(range(n))
    assert np.bincount(parts.test.labels).tolist() == [N_TEST] * n
    assert all(Path(p).is_file() for p in parts.train.paths + parts.test.paths)
    assert name in parts.train.identity and ":train:" in parts.train.identity
    assert parts.train.identity != parts.test.identity
    assert_readable_images(parts.train)


@pytest.mark.parametrize("name, template", [
    ("oxford_pets", "a photo of a {}, a type of pet."),
    ("eurosat", "a centered satellite photo of {}."),
    ("dtd", "{} texture."),
    ("food101", "a photo of {}, a type of food."),
    ("oxford_flowers", "a photo of a {}, a type of flower."),
    ("ucf101", "a photo of a person doing {}."),
    ("stanford_cars", "a photo of a {}."),
    ("sun397", "a photo of a {}."),
    ("caltech101", "a photo of a {}."),
])
def test_coop_templates(name, template):
    assert SPLIT_FILE_DATASETS[name].template == template


def test_caltech_drops_ignored_class_and_relabels(data_root):
    parts = load_dataset("caltech101", data_root)
    assert "BACKGROUND Google" not in parts.classnames and len(parts.classnames) == 3
    # yin_yang was label 2 in the file; with label 1 gone it becomes label 1
    yin = [p for p, y in zip(parts.train.paths, parts.train.labels) if "yin_yang" in p]
    assert yin and all(y == 1 for p, y in zip(parts.train.paths, parts.train.labels) if "yin_yang" in p)


def test_pets_labels_follow_file(data_root):
    parts = load_dataset("oxford_pets", data_root)
    for p, y in zip(parts.train.paths, parts.train.labels):
        assert Path(p).name.startswith(SPLIT_CLASSES["oxford_pets"][y][0])
    assert Path(parts.train.paths[0]).parent == data_root / "oxford_pets" / "images"


def test_split_identity_follows_split_file(tmp_path):
    split_path = make_split_file_dataset(tmp_path, "dtd")
    before = load_dataset("dtd", tmp_path).train.identity
    split = json.loads(split_path.read_text())
    split["train"] = split["train"][1:]
    split_path.write_text(json.dumps(split))
    after = load_dataset("dtd", tmp_path).train.identity
    assert before != after


@pytest.mark.parametrize("name", sorted(SPLIT_FILE_DATASETS))
def test_split_file_dataset_missing_folder(tmp_path, name):
    spec = SPLIT_FILE_DATASETS[name]
    with pytest.raises(DataNotFoundError, match="DATASETS.md") as e:
        load_dataset(name, tmp_path)
    assert str(tmp_path / spec.folder) in str(e.value) and "\n" not in str(e.value)


def test_split_file_missing(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="split file") as e:
        load_dataset("eurosat", tmp_path)
    assert str(tmp_path / "eurosat" / "split_zhou_EuroSAT.json") in str(e.value)


def test_image_folder_missing(tmp_path):
    make_split_file_dataset(tmp_path, "oxford_pets")
    images = tmp_path / "oxford_pets" / "images"
    for p in images.iterdir():
        p.unlink()
    images.rmdir()
    with pytest.raises(DataNotFoundError, match="image folder") as e:
        load_dataset("oxford_pets", tmp_path)
    assert str(images) in str(e.value)


def test_image_listed_but_missing(tmp_path):
    make_split_file_dataset(tmp_path, "dtd")
    first = tmp_path / "dtd" / "images" / "banded" / "banded_0000.jpg"
    first.unlink()
    with pytest.raises(DataNotFoundError, match="image listed") as e:
        load_dataset("dtd", tmp_path)
    assert str(first) in str(e.value)


def test_malformed_split_file(tmp_path):
    make_split_file_dataset(tmp_path, "dtd")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text('{"train": [["a.jpg", 0]]}')
    with pytest.raises(UserError, match="not a CoOp split file"):
        load_dataset("dtd", tmp_path)


# --- FGVC-Aircraft and ImageNet --------------------------------------------------------------

def test_fgvc_aircraft(data_root):
    parts = load_dataset("fgvc_aircraft", data_root)
    assert parts.classnames == FGVC_VARIANTS
    assert parts.template == "a photo of a {}, a type of aircraft."
    assert len(parts.train) == 3 * N_TRAIN and len(parts.test) == 3 * N_TEST
    assert parts.test.labels.tolist() == [c for c in range(3) for _ in range(N_TEST)]
    assert parts.train.identity.startswith("fgvc_aircraft:train:")
    assert_readable_images(parts.test)


def test_fgvc_missing_list(tmp_path):
    make_fgvc(tmp_path)
    (tmp_path / "fgvc_aircraft" / "images_variant_test.txt").unlink()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fgvc_aircraft", tmp_path)
    assert str(tmp_path / "fgvc_aircraft" / "images_variant_test.txt") in str(e.value)


def test_imagenet(data_root):
    parts = load_dataset("imagenet", data_root)
    # labels follow the sorted wnid folders; names come from classnames.txt
    assert parts.classnames == ["tench", "goldfish", "great white shark"]
    assert parts.template == "a photo of a {}."
    assert len(parts.train) == 3 * N_TRAIN and len(parts.test) == 3 * N_TEST
    assert all("/val/" in p for p in parts.test.paths)
    assert all(Path(p).parent.name == sorted(IMAGENET)[y] for p, y in zip(parts.train.paths, parts.train.labels))
    assert_readable_images(parts.train)


def test_imagenet_missing_classnames(tmp_path):
    make_imagenet(tmp_path)
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("imagenet", tmp_path)
    assert str(tmp_path / "imagenet" / "classnames.txt") in str(e.value)


def test_imagenet_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("imagenet", tmp_path)
    assert str(tmp_path / "imagenet") in str(e.value)


# --- ImageFolder -------------------------------------------------------------------------------

def test_imagefolder(data_root):
    parts = load_dataset("imagefolder", data_root / "folder")
    assert parts.classnames == ["golden retriever", "tabby cat"]  # sorted by folder name
    assert parts.template == "a photo of a {}."
    assert len(parts.train) == 2 * N_TRAIN and len(parts.test) == 2 * N_TEST  # .txt files skipped
    assert any(p.endswith(".PNG") for p in parts.train.paths)
    assert all(Path(p).parent.name == ["golden_retriever", "tabby_cat"][y]
               for p, y in zip(parts.test.paths, parts.test.labels))
    assert_readable_images(parts.train)


def test_imagefolder_class_mismatch(tmp_path):
    make_imagefolder(tmp_path)
    write_image(tmp_path / "test" / "zebra" / "a.jpg", 1)
    with pytest.raises(UserError, match="zebra"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_missing(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("imagefolder", tmp_path)
    assert str(tmp_path / "test") in str(e.value)


# --- CIFAR-100 ---------------------------------------------------------------------------------

def test_cifar100_through_torchvision(data_root, cifar_unchecked):
    parts = load_dataset("cifar100", data_root)
    assert parts.classnames == ["apple", "aquarium fish", "baby", "maple tree"]
    assert len(parts.train) == 4 * N_TRAIN and len(parts.test) == 4 * N_TEST
    assert parts.train.images.dtype == np.uint8 and parts.train.images.shape[1:] == (32, 32, 3)
    assert parts.train.identity == "cifar100:train" and parts.test.identity == "cifar100:test"
    assert parts.train.image(0).size == (32, 32)
    # asking for a download with the data present must not fetch (cifar_unchecked replaced the fetch by a failure)
    assert load_dataset("cifar100", data_root, True).classnames == parts.classnames


def test_cifar100_missing(tmp_path, cifar_unchecked):
    with pytest.raises(DataNotFoundError, match="benchmark.download: true") as e:
        load_dataset("cifar100", tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_cifar100_corrupt(tmp_path, cifar_unchecked):
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataNotFoundError, match="missing or corrupted") as e:
        load_dataset("cifar100", tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(e.value)


def test_cifar100_download_fails_offline(tmp_path, cifar_unchecked):
    with pytest.raises(DataNotFoundError, match="download") as e:
        load_dataset("cifar100", tmp_path, True)  # the fetch is cifar_unchecked's offline failure, never the network
    msg = str(e.value)
    assert str(tmp_path) in msg and "network is unreachable" in msg and "\n" not in msg


# --- Registry and class orders -----------------------------------------------------------------

def test_every_registered_dataset_loads(data_root, cifar_unchecked):
    names = list_datasets()
    expected = {"digits", "cifar100", "imagefolder", "imagenet", "fgvc_aircraft", *SPLIT_FILE_DATASETS}
    assert expected <= set(names)
    for name in (n for n in names if n not in EVALUATION_ONLY):  # test images only: tests/test_targets.py
        root = data_root / "folder" if name == "imagefolder" else data_root
        parts = load_dataset(name, root)
        assert parts.name == name and len(parts.train) and len(parts.test)
        assert len(parts.classnames) == int(parts.train.labels.max()) + 1
        assert "{}" in parts.template


def test_icarl_order():
    assert sorted(ICARL_CIFAR100_ORDER) == list(range(100))
    assert ICARL_CIFAR100_ORDER[:10] == (87, 0, 52, 58, 44, 91, 68, 97, 51, 15)
    assert ICARL_CIFAR100_ORDER[-10:] == (98, 13, 99, 7, 34, 55, 54, 26, 35, 39)


# --- Benchmark YAMLs ---------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CLASS_COUNTS = {
    "cifar100": 100, "imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
    "oxford_flowers": 102, "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47,
    "eurosat": 10, "ucf101": 101,
}
TOP_KEYS = {"name", "output", "seeds", "device", "plugins", "benchmark", "model", "features", "strategies"}
BENCHMARK_KEYS = {"dataset", "root", "download", "n_experiences", "classes_per_experience", "class_order",
                  "order_seed", "shots", "template"}


@pytest.mark.parametrize("dataset", sorted(CLASS_COUNTS))
def test_benchmark_yaml_splits_every_class(dataset):
    import yaml

    cfg = yaml.safe_load((BENCHMARKS / f"split_{dataset}.yaml").read_text())
    assert set(cfg) == TOP_KEYS and cfg["name"] == f"split_{dataset}"
    bench = cfg["benchmark"]
    assert set(bench) <= BENCHMARK_KEYS and bench["dataset"] == dataset
    assert ("n_experiences" in bench) != ("classes_per_experience" in bench)
    n = CLASS_COUNTS[dataset]
    if "classes_per_experience" in bench:
        assert sum(bench["classes_per_experience"]) == n
    else:
        assert n % bench["n_experiences"] == 0
    assert set(cfg["model"]) == {"arch", "pretrained"}
    assert set(cfg["features"]) == {"cache", "cache_dir", "train_views"}
    assert [s["name"] for s in cfg["strategies"]] == ["zeroshot", "lamm", "coop", "coop_lamm", "maple", "maple_lamm",
                                                      "finetune", "linear_probe", "simplecil", "ranpac", "rapf"]
