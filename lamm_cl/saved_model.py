"""What a run keeps of what it learned (``save_model: true``): the trained model of one (strategy, seed)
after its last experience, and :func:`load_model`, which turns it back into a classifier.

``<strategy>/seed<k>/model.pt`` holds the strategy's model as the run left it -- its trainable tensors
(label vectors, prompt contexts, heads) and the state it keeps beside them (frozen copies, class lists,
cached text features, normalisation statistics; not the statistics only further training reads, which a
module names in ``saved_model_skips``) -- with every part of CLIP written as a *reference*
(:mod:`lamm_cl.checkpoint`'s pickling by name), never as weights. Beside it: what rebuilds the rest (the
architecture, the weights' tag and SHA-256, the seen class names, the prompt template, the strategy,
its options and the resolved config) and how the run fed the model (image features or images).

Loading builds CLIP again from that record, refuses weights whose hash differs, and resolves the
references against it, so the model scores exactly as it did in the run's last evaluation.
"""
from __future__ import annotations

import dataclasses
import io
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from lamm_cl import checkpoint
from lamm_cl.errors import UserError
from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.safe_io import atomic_write_bytes

MODEL_FILE = "model.pt"
FORMAT = 1  # bump when the layout changes; older files are then refused by name


class _ModelReferences:
    """A run's reference table (:func:`lamm_cl.checkpoint.references`) seen from a saved model: CLIP and
    its tensors are written as references, the model and its own parameters by value, and anything
    else of the run (the template, the optimiser, the datasets) refused -- a classifier must not need them."""

    def __init__(self, full: checkpoint.References):
        self.full = full

    def key_of(self, obj: Any) -> Optional[str]:
        key = self.full.key_of(obj)
        if key is None or key.startswith("clip"):
            return key
        if key == "model" or key.startswith("param:"):
            return None
        raise checkpoint.CheckpointError(f"the model holds the run's {key!r}, which a saved model cannot keep")

    def view_of(self, obj: Any) -> Optional[str]:
        return self.full.view_of(obj)  # only CLIP's tensors are named by storage


def _pickle_module(refs) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module that makes ``torch.save`` write ``refs``' objects as
    references (torch still writes each tensor's storage its own way, so ``map_location`` works)."""

    class Pickler(checkpoint.ReferencePickler):
        def __init__(self, file, protocol=None):
            super().__init__(file, refs)

    import pickle

    return types.SimpleNamespace(Pickler=Pickler, Unpickler=pickle.Unpickler, load=pickle.load, dump=pickle.dump,
                                 __name__="pickle")


def _plugin_files() -> list[str]:
    """The plugin files this process loaded (a plugin strategy's classes live in them)."""
    return sorted(str(m.__file__) for n, m in list(sys.modules.items())
                  if n.startswith("lamm_cl_plugin_") and getattr(m, "__file__", None))


SKIPS = "saved_model_skips"  # a module attribute: names of buffers that scoring never reads


@contextmanager
def _without_training_statistics(model: torch.nn.Module):
    """While inside, each submodule's buffers named in its ``saved_model_skips`` (statistics only further
    training reads, such as RanPAC's M x M Gram matrix) are empty tensors, so a saved model stays small;
    put back after."""
    swapped = []
    try:
        for m in model.modules():
            for name in getattr(m, SKIPS, ()):
                if m._buffers.get(name) is not None:
                    swapped.append((m, name, m._buffers[name]))
                    m._buffers[name] = m._buffers[name].new_empty(0)
        yield
    finally:
        for m, name, t in swapped:
            m._buffers[name] = t


def save(path: Path, *, template, refs: checkpoint.References, cfg, entry, class_names: Sequence[str],
         prompt_template: str, inputs: str, clip: FrozenCLIP) -> Path:
    """Write ``template``'s model, after its last experience, to ``path`` (atomically).

    Args:
        refs: the run's reference table; CLIP's parts are written as references to it.
        cfg, entry: the run's config and strategy entry (recorded, with the strategy's options).
        class_names: the classes seen, by label (the model's output columns, in order).
        prompt_template: the benchmark's prompt template.
        inputs: ``"features"`` (the model reads CLIP image features) or ``"images"``.

    Raises:
        CheckpointError: the model holds something a saved model cannot keep, or cannot be pickled.
    """
    model = template.model
    buf = io.BytesIO()
    try:
        with _without_training_statistics(model):
            torch.save(model, buf, pickle_module=_pickle_module(_ModelReferences(refs)))
    except checkpoint.CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever pickle says, the model cannot be saved
        raise checkpoint.CheckpointError(f"the model cannot be saved ({type(e).__name__}: {e})") from None
    from lamm_cl.strategy_kit.prompt_learning import MapleTemplate  # maple_lamm's template is one too

    eval_autocast = isinstance(template, MapleTemplate)  # it evaluates under autocast (CUDA only)
    payload = {
        "format": FORMAT,
        "strategy": entry.name, "label": entry.run_label,
        "options": dataclasses.asdict(entry.options),
        "config": cfg.to_dict(),
        "class_names": list(class_names), "template": prompt_template,
        "inputs": inputs, "features_dtype": cfg.features.dtype, "eval_autocast": eval_autocast,
        "weights": clip.weights_record(),
        "plugin_files": _plugin_files(),
        "model": buf.getvalue(),
    }
    out = io.BytesIO()
    torch.save(payload, out)
    return atomic_write_bytes(path, out.getvalue())


class SavedModel:
    """A trained strategy's classifier, as :func:`load_model` returns it.

    Attributes:
        class_names: the classes it tells apart, by label (column ``i`` of :meth:`scores`).
        strategy, label: the strategy's name and the label its results were kept under.
        template: the benchmark's prompt template.
        options: the strategy's options, as the run resolved them.
        config: the run's resolved config.
        clip: the frozen CLIP it was built on; ``model``: the strategy's trained model.

    Example:
        >>> m = lamm_cl.load_model("results/quickstart/lamm/seed0")        # doctest: +SKIP
        >>> m.predict([PIL.Image.open("cat.jpg")])                          # doctest: +SKIP
        ['cat']
        >>> m.predict([PIL.Image.open("cat.jpg")], class_names=["cat", "lynx"])  # doctest: +SKIP
        ['lynx']
    """

    def __init__(self, model: torch.nn.Module, clip: FrozenCLIP, meta: dict, batch_size: int = 64):
        self.model, self.clip = model.eval(), clip
        self.class_names: list[str] = list(meta["class_names"])
        self.strategy: str = meta["strategy"]
        self.label: str = meta["label"]
        self.template: str = meta["template"]
        self.options: dict = meta["options"]
        self.config: dict = meta["config"]
        self._inputs, self._dtype, self._autocast = meta["inputs"], meta["features_dtype"], meta["eval_autocast"]
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"SavedModel({self.label}: {self.strategy} on {self.clip.arch}, {len(self.class_names)} classes)"

    def _tensor(self, images) -> torch.Tensor:
        """``[N, 3, H, W]`` preprocessed images from a PIL image, a list of them, or tensors (already
        preprocessed, as ``clip.preprocess`` makes them)."""
        if isinstance(images, torch.Tensor):
            return images.unsqueeze(0) if images.dim() == 3 else images
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("images: expected at least one image")
        return torch.stack([x if isinstance(x, torch.Tensor) else self.clip.preprocess(x) for x in images])

    @torch.no_grad()
    def _batch(self, x: torch.Tensor, logits=None) -> torch.Tensor:
        """The model's logits of one batch of preprocessed images (``logits``, when given, scores what the
        model reads -- image features or the images -- in its place)."""
        from lamm_cl.features.precision import autocast

        device = self.clip.device
        x = x.to(device)
        if self._inputs == "features":  # as the run's feature extractor encoded them (and stored them)
            with autocast(device, precision=self.clip.precision):
                f = self.clip.encode_images(x)
            f = f.float()
            if self._dtype == "float16":
                f = f.half().float()
            return (self.model(f)[:, : len(self.class_names)] if logits is None else logits(f)).float()
        if logits is not None:
            return logits(x).float()
        if self._autocast:
            with autocast(device, precision=self.clip.precision):
                return self.model(x)[:, : len(self.class_names)].float()
        return self.model(x)[:, : len(self.class_names)].float()

    @torch.no_grad()
    def _named(self, class_names: Sequence[str]):
        """``(columns, None)`` when every name is a trained class (its column of :meth:`scores`), else
        ``(None, logits)``: how the strategy scores the names, trained and untrained, as it scores an
        evaluation-only target (:func:`lamm_cl.runner.targets.class_logits`).

        Raises:
            ValueError: ``class_names`` is not a non-empty list of names, or names a class the strategy has
                not trained while the strategy cannot score such a class.
        """
        from types import SimpleNamespace

        from lamm_cl.data.targets import matched_names
        from lamm_cl.registry import get_strategy
        from lamm_cl.runner.targets import class_logits

        if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names) or not class_names:
            raise ValueError(f"class_names: expected a non-empty list of class names, got {class_names!r}")
        names = list(class_names)
        matched = matched_names(self.class_names, names)
        if all(c is not None for c in matched):  # exactly the columns the run's evaluation scored
            return matched, None
        logits = None
        if get_strategy(self.strategy).scores_unseen:  # declared at registration, as targets read it
            entry = SimpleNamespace(name=self.strategy, options=SimpleNamespace(**self.options))
            # the benchmark's template is the names' dataset prompt (zeroshot's and finetune's for new names)
            logits = class_logits(self.model, entry, self.clip, names, matched, self.template)
        if logits is None:
            new = [n for n, c in zip(names, matched) if c is None]
            raise ValueError(f"{self.strategy} cannot score classes it has not trained ({', '.join(map(repr, new))} "
                             f"{'is' if len(new) == 1 else 'are'} not among its {len(self.class_names)} classes, "
                             "model.class_names)")
        return None, logits

    def scores(self, images, class_names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Logits ``[N, len(class_names)]`` (on the CPU) of images: a PIL image, a list of them, or
        preprocessed image tensors ``[N, 3, H, W]`` / ``[3, H, W]``.

        Args:
            class_names: the classes to score, by name (default :attr:`class_names`). Trained classes only:
                their columns. With a class the strategy has not trained, every name is scored as the
                strategy scores an evaluation-only target's classes -- a trained one with its trained text
                (LAMM's label vectors, CoOp's context), another by name in the strategy's prompt for a class
                it has not trained (LAMM's "a photo of a {}.": zero-shot CLIP).

        Raises:
            ValueError: a name the strategy has not trained, for a strategy that cannot score one
                (linear_probe, simplecil, ranpac).
        """
        columns, logits = self._named(class_names) if class_names is not None else (None, None)
        x = self._tensor(images)
        out = torch.cat([self._batch(x[i: i + self.batch_size], logits).cpu()
                         for i in range(0, len(x), self.batch_size)])
        return out[:, columns] if columns is not None else out

    __call__ = scores

    def predict(self, images, class_names: Optional[Sequence[str]] = None) -> list[str]:
        """The class name each image is predicted as: the highest score among ``class_names`` (default
        :attr:`class_names`; see :meth:`scores`)."""
        names = list(class_names) if class_names is not None else self.class_names
        return [names[i] for i in self.scores(images, class_names).argmax(dim=1).tolist()]


def read_meta(path: Union[str, Path]) -> dict:
    """What a ``model.pt`` records (everything but the model itself), checked.

    Raises:
        UserError: no such file, unreadable, or from another lamm-cl version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path}: no saved model (run with `save_model: true` in the config or the strategy's entry)")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise UserError(f"{path}: unreadable saved model ({type(e).__name__}: {' '.join(str(e).split())[:200]})") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), bytes):
        raise UserError(f"{path}: not a saved model of this lamm-cl version")
    return meta


def load_model(run_dir: Union[str, Path], device: str = "cpu", clip: Optional[FrozenCLIP] = None) -> SavedModel:
    """The classifier a run saved (``save_model: true``) in ``run_dir`` (``<output>/<strategy>/seed<k>/``,
    or the ``model.pt`` itself), ready to score new images.

    Args:
        device: where to build CLIP and put the model.
        clip: a CLIP already built with the same weights (saves building it again). It scores at its own
            ``precision``; without it CLIP is built at the precision the run trained with, which reproduces
            the run's last evaluation exactly.

    Raises:
        UserError: no saved model there, an unreadable one, CLIP's weights not found or not the ones the
            run used (their SHA-256 differs), or the strategy's code no longer fits the saved model.
    """
    from lamm_cl import registry
    from lamm_cl.model.clip import build_clip, resolve_device

    path = Path(run_dir)
    path = path / MODEL_FILE if path.is_dir() else path
    meta = read_meta(path)
    weights = meta["weights"]
    for f in meta.get("plugin_files") or []:
        if Path(f).is_file():
            registry.load_plugin_file(f)
    registry.load_plugin_files([])  # the built-in strategies, whose classes the model is made of
    if clip is None:
        precision = (meta.get("config") or {}).get("model", {}).get("precision", "bf16-autocast")  # as it trained
        clip = build_clip(weights["arch"], weights["pretrained"], resolve_device(device), precision)
    if (clip.arch, clip.weights_sha256) != (weights["arch"], weights["sha256"]):
        raise UserError(f"{path}: saved on {weights['arch']} weights {weights['pretrained']} (SHA-256 "
                        f"{weights['sha256']}), but these are {clip.arch} {clip.pretrained} ({clip.weights_sha256}); "
                        "give the same weights")
    refs = checkpoint.clip_references(clip)
    try:
        with checkpoint.resolving(refs):
            model = torch.load(io.BytesIO(meta["model"]), map_location=clip.device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a class renamed or changed since: the same problem for the user
        raise UserError(f"{path}: the saved model does not fit this lamm-cl's {meta['strategy']} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return SavedModel(model, clip, meta)
