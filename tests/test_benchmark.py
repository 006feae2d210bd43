"""The class-incremental plan on the embedded digits: which training images each seed draws, and that
label i's images -- training and test -- are class order[i]'s, through the Avalanche streams too."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lamm_cl import config
from lamm_cl.benchmark import Plan, dry_run, make_plan, make_streams, resolve_class_order, seen_classes, split_counts
from lamm_cl.config import BenchmarkConfig
from lamm_cl.data.base import ArraySamples, DatasetParts
from lamm_cl.errors import ConfigError, DataNotFoundError
from lamm_cl.model.clip import TINYWORLD_FILE

ORDER = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]


def fewshot(shots: int = 5, **kw) -> BenchmarkConfig:
    return BenchmarkConfig(dataset="digits", n_experiences=2, class_order=ORDER, shots=shots, **kw)


def test_the_same_seed_draws_the_same_shots_and_another_seed_others(digits):
    a, again, other = (make_plan(digits, fewshot(), seed=s) for s in (0, 0, 1))
    labels = digits.train.labels
    for t in range(2):
        np.testing.assert_array_equal(a.train_index[t], again.train_index[t])
        assert set(a.train_index[t]) != set(other.train_index[t]), f"seeds 0 and 1 drew the same images ({t})"
        for plan in (a, other):
            idx = plan.train_index[t]
            assert len(set(idx)) == len(idx) == 5 * 5  # 5 distinct images for each of the 5 classes
            drawn = labels[idx]
            for c in plan.experiences[t]:
                assert int((drawn == ORDER[c]).sum()) == 5
    # the shots of one class differ between the seeds, not only their order
    def sevens(plan):
        return set(plan.train_index[0][labels[plan.train_index[0]] == 7])

    assert sevens(a) != sevens(other)
    # the test images do not depend on the seed: every test image of the experience's classes
    for t, classes in enumerate(a.experiences):
        want = {i for i, lab in enumerate(digits.test.labels) if lab in {ORDER[c] for c in classes}}
        assert set(a.test_index[t]) == set(other.test_index[t]) == want
        assert len(a.test_index[t]) == len(want)


def test_without_shots_every_training_image_of_the_classes_is_used(digits):
    plan = make_plan(digits, fewshot(shots=None), seed=0)
    for t, classes in enumerate(plan.experiences):
        want = {i for i, lab in enumerate(digits.train.labels) if lab in {ORDER[c] for c in classes}}
        assert set(plan.train_index[t]) == want and len(plan.train_index[t]) == len(want)


def test_label_i_is_class_order_i_in_the_streams(digits):
    plan = make_plan(digits, fewshot(shots=3), seed=0)
    assert plan.class_order == ORDER
    assert plan.experiences == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert plan.class_names == [digits.classnames[o] for o in ORDER]

    asked = []

    def index_reader(t, idx):  # the input of a sample is its index into the dataset
        asked.append((t, list(idx)))
        return lambda i: torch.tensor(int(idx[i]))

    scenario = make_streams(plan, index_reader, index_reader, digits.train.labels, digits.test.labels)
    # a reader is asked once per experience, with the experience's number and its indices
    assert asked == [(t, list(idx)) for t, idx in enumerate(plan.train_index)] + [
        (t, list(idx)) for t, idx in enumerate(plan.test_index)]
    for stream, labels in ((scenario.train_stream, digits.train.labels), (scenario.test_stream, digits.test.labels)):
        for t, exp in enumerate(stream):
            assert sorted(exp.classes_in_this_experience) == plan.experiences[t]
            seen = set()
            for i in range(len(exp.dataset)):
                x, y, task = exp.dataset[i]
                assert task == 0  # class-incremental: one task
                assert labels[int(x)] == ORDER[int(y)], f"label {int(y)} holds an image of class {labels[int(x)]}"
                seen.add(int(y))
            assert seen == set(plan.experiences[t])


def test_seeded_order_follows_the_order_seed_or_the_run_seed(digits):
    def order(seed, order_seed):
        b = BenchmarkConfig(dataset="digits", n_experiences=2, class_order="seeded", order_seed=order_seed)
        return make_plan(digits, b, seed=seed).class_order

    assert order(0, 5) == order(1, 5) == np.random.default_rng(5).permutation(10).tolist()
    assert order(3, None) == np.random.default_rng(3).permutation(10).tolist() != order(4, None)


@pytest.mark.parametrize("n, per, counts", [(3, None, [4, 3, 3]), (4, None, [3, 3, 2, 2]), (10, None, [1] * 10),
                                            (None, [6, 1, 3], [6, 1, 3])])
def test_split_counts(n, per, counts):
    b = BenchmarkConfig(dataset="digits", n_experiences=n, classes_per_experience=per)
    assert split_counts(10, b) == counts


def test_split_errors_and_seen_classes(digits):
    with pytest.raises(ConfigError, match="11 experiences cannot be made from 10 classes"):
        split_counts(10, BenchmarkConfig(dataset="digits", n_experiences=11))
    with pytest.raises(ConfigError, match="sums to 9"):
        split_counts(10, BenchmarkConfig(dataset="digits", classes_per_experience=[5, 4]))
    plan = make_plan(digits, BenchmarkConfig(dataset="digits", classes_per_experience=[6, 1, 3], class_order=ORDER),
                     seed=0)
    assert plan.experiences == [[0, 1, 2, 3, 4, 5], [6], [7, 8, 9]]
    assert [seen_classes(plan, t) for t in range(3)] == [6, 7, 10]


# ----------------------------------------------------------------------------- a toy dataset, orders, errors


def toy(train_counts: list[int], test_counts: list[int] | None = None) -> DatasetParts:
    """Classes c0, c1, ... with that many training (and test, default 2) images each, in label order."""
    test_counts = [2] * len(train_counts) if test_counts is None else test_counts
    tr = np.repeat(np.arange(len(train_counts)), train_counts)
    te = np.repeat(np.arange(len(test_counts)), test_counts)
    return DatasetParts(name="toy", classnames=[f"c{i}" for i in range(len(train_counts))],
                        train=ArraySamples(np.zeros((len(tr), 2, 2), np.uint8), tr, "toy-train"),
                        test=ArraySamples(np.zeros((len(te), 2, 2), np.uint8), te, "toy-test"),
                        template="a toy {}.")


def test_a_class_short_of_shots_keeps_all_its_images_and_one_with_exactly_shots_is_drawn():
    # reversed order: new label i is class 3 - i, so a name looked up by the new label would be wrong
    b = BenchmarkConfig(dataset="toy", n_experiences=1, class_order=[3, 2, 1, 0], shots=4)
    plan = make_plan(toy([5, 4, 1, 6]), b, seed=0)
    assert plan.short_classes == [("c2", 1)]  # c1 has exactly 4: drawn, not short
    assert (plan.dataset, plan.order_name, plan.template) == ("toy", "explicit", "a toy {}.")
    assert plan.class_names == ["c3", "c2", "c1", "c0"]
    # training images 0-4: c0, 5-8: c1, 9: c2, 10-15: c3. One generator seeded with the run's seed draws,
    # in label order, every class that has at least `shots` images (Dassl: random.sample when
    # len(items) >= num_shots), so c1's draw of all its 4 images still moves it on; each draw in dataset order
    rng = np.random.default_rng(0)
    c3, c1, c0 = (np.sort(rng.choice(np.arange(lo, hi), 4, replace=False)) for lo, hi in ((10, 16), (5, 9), (0, 5)))
    assert list(plan.train_index[0]) == [*c3, 9, *c1, *c0]
    b.template = "itself: {}"
    assert make_plan(toy([5, 4, 1, 6]), b, seed=0).template == "itself: {}"


@pytest.mark.parametrize("shots", [None, 2])
def test_a_class_without_training_or_test_images_is_refused_by_name(shots):
    b = BenchmarkConfig(dataset="toy", n_experiences=2, class_order=[1, 0], shots=shots)
    with pytest.raises(ConfigError) as e:
        make_plan(toy([3, 0]), b, seed=0)
    assert str(e.value) == "benchmark: class 'c1' has no training images in toy"
    with pytest.raises(ConfigError) as e:
        make_plan(toy([3, 3], test_counts=[2, 0]), b, seed=0)
    assert str(e.value) == "benchmark: class 'c1' has no test images in toy"


def test_named_orders_and_bad_explicit_orders(digits):
    def resolve(order, parts=digits):
        return resolve_class_order(parts, BenchmarkConfig(dataset="x", n_experiences=1, class_order=order), 0)

    assert resolve("identity") == (list(range(10)), "identity")
    hundred = toy([1] * 100)
    order, name = resolve("icarl", hundred)
    assert name == "icarl" and order[:5] == [87, 0, 52, 58, 44] and order[-1] == 39 and sorted(order) == list(range(100))
    assert resolve([9, 0, 3]) == ([9, 0, 3], "explicit")
    with pytest.raises(ConfigError) as e:
        resolve("icarl")
    assert str(e.value) == "benchmark.class_order: icarl is the 100-class CIFAR-100 order; digits has 10 classes"
    with pytest.raises(ConfigError) as e:
        resolve([9, 0, 10, -1, 11, 12, 13, 14])  # 0 and 9 are in range; the message shows the first five others
    assert str(e.value) == "benchmark.class_order: class ids [10, -1, 11, 12, 13] are outside 0..9 of digits"
    with pytest.raises(ConfigError) as e:
        resolve([0, 1, 1])
    assert str(e.value) == "benchmark.class_order: a class id is listed twice"
    b = BenchmarkConfig(dataset="digits", n_experiences=2, class_order="seeded", order_seed=5)
    assert make_plan(digits, b, seed=0).order_name == "seeded(5)"


def plan_of(n_classes: int, experiences: list[list[int]], short: list[tuple[str, int]]) -> Plan:
    return Plan(dataset="toy", class_order=list(range(n_classes)), class_names=[f"c{i}" for i in range(n_classes)],
                experiences=experiences, train_index=[np.arange(10 + t) for t in range(len(experiences))],
                test_index=[np.arange(4 - t) for t in range(len(experiences))], template="{}",
                order_name="identity", short_classes=short)


def test_shots_note_is_one_line_naming_at_most_twelve_classes():
    assert plan_of(20, [list(range(20))], []).shots_note(5) is None
    names = "abcdefghijklm"
    short = [(c, i + 1) for i, c in enumerate(names)]
    assert plan_of(20, [list(range(20))], short[:12]).shots_note(5) == (
        "5 shots asked; 12 of 20 classes have fewer training images and use all they have: 'a' (1), 'b' (2), "
        "'c' (3), 'd' (4), 'e' (5), 'f' (6), 'g' (7), 'h' (8), 'i' (9), 'j' (10), 'k' (11), 'l' (12)")
    assert plan_of(20, [list(range(20))], short + [("n", 1)]).shots_note(13).endswith(
        "'j' (10), 'k' (11), 'l' (12), and 2 more")


def test_describe_names_six_classes_at_most_and_counts_images():
    plan = plan_of(14, [list(range(7)), list(range(7, 13)), [13]], [])
    assert plan.n_experiences == 3
    assert plan.describe() == [
        "experience 0: 7 classes (c0, c1, c2, c3, c4, c5, ...); 10 train / 4 test images",
        "experience 1: 6 classes (c7, c8, c9, c10, c11, c12); 11 train / 3 test images",
        "experience 2: 1 classes (c13); 12 train / 2 test images",
    ]


# ----------------------------------------------------------------------------- the dry run


def dry_config(**benchmark):
    return config.parse({"name": "d", "seeds": [0, 1], "device": "cpu", "benchmark": {"dataset": "digits", **benchmark},
                         "model": {"arch": "lamm-tiny", "pretrained": "none"},
                         "strategies": [{"name": "zeroshot"},
                                        {"name": "finetune", "epochs": 2, "batch_size": 8, "lr": 0.01}]})


def test_dry_run_lines(digits):
    # digits: training images per class 0-9 [125, 127, 124, 128, 127, 127, 127, 125, 122, 126],
    # test images [53, 55, 53, 55, 54, 55, 54, 54, 52, 54]; 126 shots leave 7, 2, 0 and 8 short
    exp0 = "5 classes (seven, two, nine, zero, four); 125+124+126+125+126 train / 54+53+54+53+54 test images"
    exp1 = "5 classes (one, eight, three, six, five); 126+122+126+126+126 train / 55+52+55+54+55 test images"
    seed_lines = ["class order explicit, 2 experiences of [5, 5] classes",
                  "  experience 0: " + exp0.replace("125+124+126+125+126", "626").replace("54+53+54+53+54", "268"),
                  "  experience 1: " + exp1.replace("126+122+126+126+126", "626").replace("55+52+55+54+55", "271"),
                  "  126 shots asked; 4 of 10 classes have fewer training images and use all they have: "
                  "'seven' (125), 'two' (124), 'zero' (125), 'eight' (122)"]
    lines = dry_run(dry_config(n_experiences=2, class_order=ORDER, shots=126))
    assert lines == [
        "dataset digits: 10 classes, 1258 train / 539 test images; template 'a photo of the number {}.'",
        "model lamm-tiny + none (RANDOM weights: the numbers will say nothing about pretrained CLIP)",
        "device cpu",
        "seed 0: " + seed_lines[0], *seed_lines[1:],
        "seed 1: " + seed_lines[0], *seed_lines[1:],
        "strategy zeroshot: epochs 0, batch 32, lr 0.002; trains on cached image features",
        "strategy finetune: epochs 2, batch 8, lr 0.01; reads images every step (no feature cache)",
    ]
    cfg = dry_config(n_experiences=2, class_order="seeded", template="digit {}")
    cfg.model.pretrained = "tinyworld"
    lines = dry_run(cfg)
    assert lines[:4] == ["dataset digits: 10 classes, 1258 train / 539 test images; template 'digit {}'",
                         f"model lamm-tiny + tinyworld: weights read from {TINYWORLD_FILE}", "device cpu",
                         "seed 0: class order seeded(0), 2 experiences of [5, 5] classes"]
    assert lines[6] == "seed 1: class order seeded(1), 2 experiences of [5, 5] classes"  # each seed's own plan
    assert not any("shots" in line for line in lines)


@pytest.mark.parametrize("download", [False, True])
def test_dry_run_of_missing_data_says_whether_a_real_run_would_download(tmp_path, download):
    cfg = dry_config(n_experiences=2, root=str(tmp_path), download=download)
    cfg.benchmark.dataset = "cifar100"
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    told = f"cifar100: no data in {tmp_path} yet; a dry run does not download, a real run will (benchmark.download: true)"
    assert (str(e.value) == told) is download
    assert str(tmp_path) in str(e.value)


def test_the_suite_cannot_reach_the_network(monkeypatch):
    """conftest refuses connections off the machine, so a download that a bug lets through fails loudly
    instead of fetching CIFAR-100 (the test above sets benchmark.download: true).

    The off-machine attempts below never reach a real connect: conftest's guard is checked wrapped
    around a stand-in that only records, so even a broken guard sends nothing."""
    import os
    import socket
    import urllib.request

    from conftest import NetworkBlocked, offline_guard

    assert getattr(socket.socket.connect, "offline_guard", False), "conftest's offline guard is not installed"
    assert getattr(socket.socket.connect_ex, "offline_guard", False), "conftest's offline guard is not installed"
    passed = []
    real_connect = socket.socket.connect

    def stand_in(sock, address):  # what the guard lets through: off the machine never, loopback for real
        passed.append(address[0])
        if address[0] != "127.0.0.1":
            raise AssertionError(f"the guard let {address!r} through")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", offline_guard(stand_in))
    monkeypatch.setattr(socket.socket, "connect_ex", offline_guard(stand_in))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(NetworkBlocked, match="203.0.113.7"):
            s.connect(("203.0.113.7", 443))  # TEST-NET-3
        with pytest.raises(NetworkBlocked, match="203.0.113.8"):
            s.connect_ex(("203.0.113.8", 443))
    with pytest.raises(NetworkBlocked, match="198.51.100.9"):  # what torchvision's download goes through
        urllib.request.urlopen("http://198.51.100.9/cifar-100-python.tar.gz", timeout=1)
    assert passed == []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.connect(server.getsockname())  # loopback stays open (Ray, submitit)
    assert passed == ["127.0.0.1"]
    # what the guard cannot reach, a Ray's daemons, is told not to report usage (conftest)
    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"


def test_a_dry_run_never_asks_the_loader_to_download(tmp_path, monkeypatch):
    import lamm_cl.data

    asked = []

    def loader(name, root, download=False):
        asked.append(download)
        raise DataNotFoundError(f"{name}: nothing in {root}")

    monkeypatch.setattr(lamm_cl.data, "load_dataset", loader)
    with pytest.raises(DataNotFoundError):
        dry_run(dry_config(n_experiences=2, root=str(tmp_path), download=True))
    assert asked == [False]
