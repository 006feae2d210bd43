"""Every benchmark YAML validates; --dry-run prints the plan and stops at missing data with status 2."""
from pathlib import Path

import pytest
import torch

from lamm_cl import config
from lamm_cl.benchmark import dry_run
from lamm_cl.cli import main
from lamm_cl.errors import DataNotFoundError

from builders import make_imagefolder, one_line, write_image, write_yaml

YAMLS = sorted(Path("benchmarks").glob("*.yaml"))


def test_there_is_a_benchmark_per_dataset():
    names = {p.stem for p in YAMLS}
    assert {"quickstart", "split_cifar100"} <= names
    assert len([n for n in names if n.startswith("split_")]) == 12


@pytest.mark.parametrize("path", [p for p in YAMLS if p.stem != "quickstart"], ids=lambda p: p.stem)
def test_benchmark_yaml_validates_up_to_the_missing_data(path, tmp_path):
    cfg = config.load(path, [f"benchmark.root={tmp_path}"])
    assert cfg.model.arch == "ViT-B-16" and cfg.model.pretrained == "openai"
    with pytest.raises(DataNotFoundError) as e:
        dry_run(cfg)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_dry_run_prints_the_plan(capsys, tmp_path):
    assert main(["run", "benchmarks/quickstart.yaml", "--dry-run", "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "5 experiences of [2, 2, 2, 2, 2] classes" in out and "lamm-tiny + tinyworld" in out
    assert "RANDOM weights" not in out  # the quickstart's tiny CLIP is pretrained (on tinyworld)
    assert "experience 4: 2 classes" in out
    assert not (tmp_path / "o").exists()


def test_dry_run_of_missing_data_is_one_line_and_status_2(capsys, tmp_path):
    code = main(["run", "benchmarks/split_eurosat.yaml", "--dry-run", "--set", f"benchmark.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "eurosat" in err


def test_uneven_split_is_explicit(digits):
    cfg = config.parse({"name": "u", "benchmark": {"dataset": "digits", "n_experiences": 3},
                        "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "zeroshot"}]})
    lines = dry_run(cfg)
    assert any("3 experiences of [4, 3, 3] classes" in line for line in lines)


# --------------------------------------------------------------------------- a dry run that passes can start


def _config(tmp_path, strategies, **top) -> str:
    data = {"name": "dry", "seeds": [0], "device": "cpu",
            "benchmark": {"dataset": "digits", "n_experiences": 2},
            "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": strategies, **top}
    return str(write_yaml(tmp_path / "c.yaml", data))


@pytest.mark.parametrize("argv_extra, top, culprit", [
    (["--device", "tpu"], {}, "device: 'tpu' is not a device"),
    ([], {"device": "gpu"}, "device: 'gpu' is not a device"),
    ([], {"loggers": [{"name": "csv", "folder": "x"}]}, "loggers[0].folder: unknown parameter"),
], ids=["device-flag", "device-key", "logger"])
def test_dry_run_refuses_the_device_and_loggers_the_run_refuses(tmp_path, capsys, argv_extra, top, culprit):
    cfg = _config(tmp_path, [{"name": "zeroshot"}], **top)
    assert main(["run", cfg, "--dry-run", *argv_extra]) == 2
    one_line(capsys.readouterr().err, culprit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_dry_run_of_a_cuda_config_without_cuda_is_a_note(tmp_path, capsys):
    """A GPU job prepared on a login node: the name is right, only this machine lacks CUDA (the run refuses)."""
    cfg = _config(tmp_path, [{"name": "zeroshot"}], device="cuda:1")
    assert main(["run", cfg, "--dry-run"]) == 0
    assert "device cuda:1 (CUDA is not available on this machine: the run must start on one where it is)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("arch, strategy, culprit", [
    # lamm-tiny has 2 blocks per tower, ViT-B-16 12 (from open_clip's config: no weights are loaded)
    ("lamm-tiny", {"name": "maple", "prompt_depth": 3},
     "strategies[1].prompt_depth: 3 asked, lamm-tiny has 2 blocks in its smaller tower; set prompt_depth: 2 or less"),
    ("ViT-B-16", {"name": "maple_lamm", "prompt_depth": 13},
     "strategies[1].prompt_depth: 13 asked, ViT-B-16 has 12 blocks in its smaller tower"),
    ("RN50", {"name": "maple", "prompt_depth": 1}, "strategies[1]: MaPLe's vision prompts need a ViT image encoder"),
    # "a photo of a" is 4 BPE tokens: CoOp wants exactly n_ctx, MaPLe at least n_ctx
    ("lamm-tiny", {"name": "coop", "n_ctx": 2}, "strategies[1].ctx_init: 'a photo of a' is 4 tokens but n_ctx is 2"),
    ("ViT-B-16", {"name": "maple", "n_ctx": 5, "prompt_depth": 1},
     "strategies[1].ctx_init: 'a photo of a' is 4 tokens but n_ctx is 5; give at least 5"),
    ("RN50", {"name": "finetune", "last_blocks": 1}, "strategies[1].last_blocks: the image encoder of RN50 has no"),
    ("ViT-B-16", {"name": "finetune", "last_blocks": 13},
     "strategies[1].last_blocks: 13 asked, the image encoder of ViT-B-16 has 12 blocks"),
], ids=["tiny-maple-depth", "vit-maple-lamm-depth", "resnet-maple", "coop-ctx-init", "maple-ctx-init",
        "resnet-finetune-blocks", "vit-finetune-blocks"])
def test_dry_run_checks_every_strategy_against_the_model(tmp_path, capsys, monkeypatch, arch, strategy, culprit):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = _config(tmp_path, [{"name": "zeroshot"}, strategy], model={"arch": arch, "pretrained": "none"})
    assert main(["run", cfg, "--dry-run"]) == 2
    one_line(capsys.readouterr().err, culprit)
    fixed = {**strategy, **{k: v for k, v in {"prompt_depth": 1, "n_ctx": 4, "last_blocks": None}.items()
                            if k in strategy}}
    if arch != "RN50" or fixed["name"] == "finetune":  # a ResNet has no depth MaPLe could use
        cfg = _config(tmp_path, [{"name": "zeroshot"}, fixed], model={"arch": arch, "pretrained": "none"})
        assert main(["run", cfg, "--dry-run"]) == 0, capsys.readouterr().err


def test_dry_run_says_where_the_weights_come_from_without_the_network(tmp_path, capsys, monkeypatch):
    # the session's guard refuses any connection off the machine: a lookup that went online would fail here
    hub = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    cfg = _config(tmp_path, [{"name": "zeroshot"}], model={"arch": "ViT-B-16", "pretrained": "openai"})
    assert main(["run", cfg, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("model ViT-B-16 + openai: weights not downloaded yet: the run will download open_clip_model.safetensors "
            f"from https://huggingface.co/timm/vit_base_patch16_clip_224.openai into {hub}") in out
    # open_clip's tag entry: hf_hub timm/vit_base_patch16_clip_224.openai/, safetensors first; the Hub cache's
    # layout is models--<org>--<name>/refs/main (a commit) and snapshots/<commit>/<file>
    repo = hub / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"not really weights")
    assert main(["run", cfg, "--dry-run"]) == 0
    assert f"model ViT-B-16 + openai: weights in the Hugging Face cache: {weights}" in capsys.readouterr().out
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    cfg = _config(tmp_path, [{"name": "zeroshot"}], model={"arch": "ViT-B-16", "pretrained": str(local)})
    assert main(["run", cfg, "--dry-run"]) == 0
    assert f"weights read from {local}" in capsys.readouterr().out


def test_check_images_names_the_image_that_does_not_decode(tmp_path, capsys):
    root = tmp_path / "folder"
    make_imagefolder(root)
    bad = root / "test" / "golden_retriever" / "img0.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 a JPEG cut short")
    data = {"name": "imgs", "device": "cpu", "benchmark": {"dataset": "imagefolder", "root": str(root),
                                                           "n_experiences": 2},
            "model": {"arch": "lamm-tiny", "pretrained": "none"}, "strategies": [{"name": "zeroshot"}]}
    cfg = str(write_yaml(tmp_path / "c.yaml", data))
    assert main(["run", cfg, "--dry-run"]) == 0  # the index alone is fine: nothing is decoded without the flag
    capsys.readouterr()
    assert main(["run", cfg, "--dry-run", "--check-images"]) == 2
    one_line(capsys.readouterr().err, f"cannot decode image {bad}")
    write_image(bad, 0)
    assert main(["run", cfg, "--dry-run", "--check-images"]) == 0
    assert "every image on disk decodes (10)" in capsys.readouterr().out  # 2 classes x (3 train + 2 test)
    assert main(["run", cfg, "--check-images"]) == 2
    one_line(capsys.readouterr().err, "--check-images goes with --dry-run")
    assert not (tmp_path / "results").exists()
