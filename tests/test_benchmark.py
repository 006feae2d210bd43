"""The class-incremental plan on the embedded digits: which training images each seed draws, and that
label i's images -- training and test -- are class order[i]'s, through the Avalanche streams too."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lamm_cl.benchmark import make_plan, make_streams, seen_classes, split_counts
from lamm_cl.config import BenchmarkConfig
from lamm_cl.errors import ConfigError

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

    def index_reader(t, idx):  # the input of a sample is its index into the dataset
        return lambda i: torch.tensor(int(idx[i]))

    scenario = make_streams(plan, index_reader, index_reader, digits.train.labels, digits.test.labels)
    for stream, labels in ((scenario.train_stream, digits.train.labels), (scenario.test_stream, digits.test.labels)):
        for t, exp in enumerate(stream):
            assert sorted(exp.classes_in_this_experience) == plan.experiences[t]
            seen = set()
            for i in range(len(exp.dataset)):
                x, y = exp.dataset[i][:2]
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
    assert [seen_classes(plan, t) for t in range(3)] == [6, 7, 10]
