"""A seed's result does not depend on how it was run (issue 25, item 1; issue 29, item 3).

With ``benchmark.shots`` and ``features.train_views > 0`` the augmented views are made of the few-shot
images only; a view must be seeded by the image's index in its split (not by its position among the
images extracted beside it), and a seed's views must come from its own draw's entry, so that seed 0 trains
on the same crops whether the config lists ``seeds: [0]`` or ``[0, 1]``, whether the run was interrupted
and resumed, and whether a sweep ran it as a job of its own.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from lamm_cl import config
from lamm_cl.features import AugmentedView, ViewReader, view_seed

BYTE_EQUAL = ["class_order.json", "accuracy_matrix.csv", "accuracy_matrix_task_aware.csv", "metrics.csv",
              "per_class_accuracy.csv", "fewshot.json"]


def _data(seeds, cache_dir) -> dict:
    return {
        "name": "views", "seeds": seeds, "device": "cpu",
        # tinyworld's shapes: 200 test images to encode per store, not the colours' 500
        "benchmark": {"dataset": "tinyworld_shapes", "n_experiences": 2, "class_order": "identity", "shots": 2},
        "model": {"arch": "lamm-tiny", "pretrained": "tinyworld"},
        "features": {"train_views": 2, "cache_dir": str(cache_dir)},
        # a linear probe on few images, with a large lr: its decision boundaries follow the exact crops
        "strategies": [{"name": "linear_probe", "epochs": 2, "lr": 0.5, "batch_size": 2}]}


def _cfg(seeds, cache_dir):
    return config.parse(_data(seeds, cache_dir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Seed 0 run alone and seeds [0, 1] run together, each with its own feature store (seed 0's
    entry must not simply be read back from the first run); the first store is kept as it was."""
    from lamm_cl.runner import run

    root = tmp_path_factory.mktemp("views")
    run(_cfg([0], root / "c1"), root / "alone", progress=False)
    shutil.copytree(root / "c1", root / "c1_kept")  # the runs below start from it, never from c2
    run(_cfg([0, 1], root / "c2"), root / "both", progress=False)
    return root


def _same_run(a, b) -> None:
    """Two run folders of one (benchmark, strategy, seed) hold the same results, byte for byte; their
    summaries differ at most in the time taken, the seeds and output listed, and whether resumed."""
    for name in BYTE_EQUAL:
        assert (a / name).read_bytes() == (b / name).read_bytes(), (a, name)
    x, y = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for s in (x, y):
        for k in ("seconds", "resumed"):
            s["info"].pop(k)
        s.pop("config", None)  # it lists the seeds and the output
    assert x == y


def test_seed_zero_is_byte_identical_whichever_other_seeds_run(runs):
    _same_run(runs / "alone" / "linear_probe" / "seed0", runs / "both" / "linear_probe" / "seed0")
    assert (runs / "both" / "linear_probe" / "seed1" / "summary.json").is_file()


@pytest.mark.integration
def test_a_run_interrupted_and_resumed_gives_the_same_bytes(runs, tmp_path, monkeypatch):
    from lamm_cl import checkpoint
    from lamm_cl.results import read_run
    from lamm_cl.runner import run

    cache = tmp_path / "c"
    shutil.copytree(runs / "c1_kept", cache)  # seed 1's views are not in it: made afresh on resume
    save = checkpoint.save

    def save_then_interrupt(path, **kwargs):  # Ctrl-C just after seed 0's first checkpoint
        save(path, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg([0, 1], cache), tmp_path / "out", progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    assert (tmp_path / "out" / "linear_probe" / "seed0" / checkpoint.CHECKPOINT_FILE).is_file()
    run(_cfg([0, 1], cache), tmp_path / "out", progress=False, resume=True)
    assert read_run(tmp_path / "out" / "linear_probe" / "seed0").info["resumed"] is True
    for seed in (0, 1):
        _same_run(runs / "both" / "linear_probe" / f"seed{seed}", tmp_path / "out" / "linear_probe" / f"seed{seed}")


def _in_process_launcher():
    """A sweep launcher that runs every call (the feature stage, then one job per seed) right here, in
    order: the sweep's own path to each run, without worker processes."""
    from types import SimpleNamespace

    from lamm_cl.sweep.launch_local import Options
    from lamm_cl.sweep.launchers import call

    def launch(phases, options, output, on_done):
        for calls in phases:
            for c in calls:
                on_done(c, call(c))

    return SimpleNamespace(Options=Options, launch=launch)


@pytest.mark.integration
@pytest.mark.usefixtures("no_report")
def test_a_sweep_job_per_seed_gives_the_same_bytes_as_one_run(runs, tmp_path, monkeypatch):
    import lamm_cl.sweep.driver as driver
    import lamm_cl.sweep.table
    from lamm_cl.sweep import load_sweep
    from lamm_cl.sweep.driver import run_sweep

    cache = tmp_path / "c"
    shutil.copytree(runs / "c1_kept", cache)
    bench = tmp_path / "views.yaml"
    bench.write_text(yaml.safe_dump({k: v for k, v in _data([0], cache).items() if k != "seeds"}))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "views", "benchmarks": [str(bench)], "seeds": [0, 1],
                                          "output": str(tmp_path / "sweep"), "launcher": {"name": "local"}}))
    monkeypatch.setattr(driver, "get_launcher", lambda name: _in_process_launcher())
    monkeypatch.setattr(lamm_cl.sweep.table, "build_table", lambda *a, **k: [])  # plots: tested elsewhere
    outcome = run_sweep(load_sweep(sweep_file))
    assert outcome.exit_code == 0
    for seed in (0, 1):
        _same_run(runs / "both" / "linear_probe" / f"seed{seed}",
                  tmp_path / "sweep" / "views" / "linear_probe" / f"seed{seed}")


def test_a_view_is_seeded_by_the_images_split_index_in_any_subset(digits, tiny_clip):
    augment = AugmentedView.for_clip(tiny_clip)
    whole = ViewReader(digits.train, augment, view=1)
    for picked in ([7, 3, 250], [250], [1, 250, 9, 4]):
        sub = digits.train.subset(picked)
        assert sub.index.tolist() == picked
        reader = ViewReader(sub, augment, view=1)
        at = picked.index(250)
        torch.testing.assert_close(reader[at], whole[250], rtol=0, atol=0)
        torch.manual_seed(view_seed(1, 250))
        want = augment.tail(augment.flip(augment.crop(digits.train.image(250))))
        assert torch.equal(reader[at], want)
    nested = digits.train.subset([10, 20, 30]).subset([2, 0])
    assert nested.index.tolist() == [30, 10] and np.array_equal(nested.labels, digits.train.labels[[30, 10]])
