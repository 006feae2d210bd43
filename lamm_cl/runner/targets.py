"""Evaluation-only targets (``benchmark.evaluate_on``): datasets a run never trains on, scored after every
experience -- LAMM's, CoOp's and MaPLe's domain generalization (ImageNet -> ImageNet-V2/Sketch/A/R) and
cross-dataset transfer (ImageNet -> the other ten datasets).

A target is scored among its own classes only (ImageNet-A and -R: their 200). A target class that is
also a trained class -- the same wnid (:attr:`DatasetParts.class_keys`), or else the same name -- is
scored with the strategy's text for that trained class (LAMM's label vectors, once trained); any other
class is scored by name, open-vocabulary, in the prompt the strategy would give a class it has not
trained (:func:`unseen_templates`). What carries over therefore differs by method: CoOp's and MaPLe's
learnt prompts do, LAMM's per-class vectors cannot reach a new class, so LAMM on a new dataset is CLIP
with LAMM's prompt.

Which strategies can score a class they never trained is read off the model they built
(:func:`make_scorer`): CLIP-text classifiers (zeroshot, lamm, coop, coop_lamm, rapf on cached
features; maple, maple_lamm, finetune on images). The others (linear_probe, simplecil, ranpac, a
plugin whose model is none of these) are "not applicable": their rows carry no number. Frozen-feature
strategies score the target's cached image features (the feature store, keyed as any dataset's): no
image passes beyond the one extraction every strategy and seed shares.

How a model scores a list of class names (:func:`class_logits`) also serves a saved model asked about
class names (``SavedModel.scores(images, class_names=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from lamm_cl.benchmark import Plan
from lamm_cl.data.base import DatasetParts
from lamm_cl.data.targets import Target, matched_labels
from lamm_cl.features import autocast
from lamm_cl.features.extractor import ImageReader
from lamm_cl.model.classifier import PromptClassifier
from lamm_cl.model.clip import normalize
from lamm_cl.model.deep_prompts import MapleClassifier
from lamm_cl.model.prompts import ClassPrompts, PromptEncoder
from lamm_cl.registry import get_strategy

NOT_APPLICABLE = "not applicable: the strategy cannot score classes it has not trained"


def unseen_templates(entry, own: Optional[str], target: Target) -> list[str]:
    """The prompts a strategy gives a class it has not trained, on ``target``.

    A strategy whose prompt is the benchmark's template (zeroshot, finetune's zero-shot head, an option
    ``template: dataset``) takes the target's template, as zero-shot CLIP evaluated on that dataset does;
    zeroshot's ``templates`` ensemble stays an ensemble; a strategy with a prompt of its own keeps it
    (LAMM's "a photo of a {}.", rapf's ``template``, CoOp's and MaPLe's learnt context before the name:
    ``own``, the template of the strategy's prompts).
    """
    return _unseen_templates(entry, own, target.template)


def _unseen_templates(entry, own: Optional[str], dataset_template: str) -> list[str]:
    """:func:`unseen_templates` for classes whose dataset prompt is ``dataset_template``."""
    opts = entry.options
    ensemble = getattr(opts, "templates", None)
    if ensemble:
        return list(ensemble)
    template = getattr(opts, "template", None)
    if entry.name in ("zeroshot", "finetune") or template == "dataset":
        return [dataset_template]
    if isinstance(template, str) and template.count("{}") == 1:
        return [template]
    return [own or dataset_template]


# --------------------------------------------------------------------------- text of a target's classes


def _prompt_text(model: PromptClassifier, entry, target: Target, matched: list[Optional[int]],
                 cache: dict) -> torch.Tensor:
    """Normalised text features ``[C, D]`` of the target's classes with a CoOp/LAMM prompt classifier: the
    model's own text for trained classes (its label vectors where it has them), names otherwise.

    A class the model already scores is read from the model's own text features (cached by the model,
    so no text pass); the unseen classes' text is kept in ``cache`` while the prompt cannot change
    (no shared context)."""
    return _prompt_names_text(model, entry, target.parts.classnames, matched, target.template, cache, target.label)


def _prompt_names_text(model: PromptClassifier, entry, names: list[str], matched: list[Optional[int]],
                       template: str, cache: dict, key) -> torch.Tensor:
    """:func:`_prompt_text` of classes ``names`` (``template``: their dataset's prompt; ``key`` names
    them in ``cache``)."""
    rows: dict[int, torch.Tensor] = {}
    column = {c: j for j, c in enumerate(model.classes)}
    known = [(i, c) for i, c in enumerate(matched) if c is not None]
    if any(c in column for _, c in known):
        own = model.text_features()  # eval mode: every known class's frozen text, as the model scores it
        rows.update((i, own[column[c]]) for i, c in known if c in column)
    later = [(i, c) for i, c in known if c not in column]  # a trained class whose experience has not come yet
    if later:
        classes = [c for _, c in later]
        if hasattr(model, "members"):  # a template ensemble encodes itself
            t = model.encode(classes)
        else:
            table = model.labels
            labels = {c: table.vectors[str(c)] for c in classes if str(c) in table.vectors} if table is not None else None
            t = model.encoder.encode(classes, context=model.context, labels=labels, prefix=model.prefix_state())
        rows.update(zip((i for i, _ in later), normalize(t)))
    unseen = [i for i, c in enumerate(matched) if c is None]
    if unseen:
        templates = _unseen_templates(entry, model.encoder.prompts.template, template)
        key = (key, tuple(templates))
        if model.context is not None or key not in cache:
            cache[key] = _unseen_text(model, [names[i] for i in unseen], templates)
        rows.update(zip(unseen, cache[key]))
    return torch.stack([rows[i] for i in range(len(matched))])


def _unseen_text(model: PromptClassifier, names: list[str], templates: list[str]) -> torch.Tensor:
    """Normalised text of ``names`` in ``templates`` (their mean's direction for an ensemble), with the
    model's shared context in front where it has one."""
    feats = []
    idx = list(range(len(names)))
    for tpl in templates:
        enc = PromptEncoder(model.clip, ClassPrompts(model.clip, names, tpl))
        if len(templates) > 1:  # as the ensemble classifier: each prompt whole, normalised, then the mean
            feats.append(normalize(enc.encode(idx)))
            continue
        prefix = enc.prefix_state(model.context) if model.shared_prefix else None
        feats.append(enc.encode(idx, context=model.context, prefix=prefix))
    return normalize(torch.stack(feats).mean(0) if len(feats) > 1 else feats[0])


def _maple_text(model: MapleClassifier, entry, target: Target, matched: list[Optional[int]]) -> torch.Tensor:
    """Normalised text features ``[C, D]`` of the target's classes with MaPLe's deep prompts (and LAMM's
    label vectors for trained classes that have them); other classes by name in MaPLe's prompt."""
    return _maple_names_text(model, entry, target.parts.classnames, matched, target.template)


def _maple_names_text(model: MapleClassifier, entry, names: list[str], matched: list[Optional[int]],
                      template: str) -> torch.Tensor:
    """:func:`_maple_text` of classes ``names`` (``template``: their dataset's prompt)."""
    rows: dict[int, torch.Tensor] = {}
    known = [(i, c) for i, c in enumerate(matched) if c is not None]
    if known:
        classes = [c for _, c in known]
        table = model.labels
        labels = {c: table.vectors[str(c)] for c in classes if str(c) in table.vectors} if table is not None else None
        rows.update(zip((i for i, _ in known), normalize(model._encode_tables(classes, [labels]))))
    unseen = [i for i, c in enumerate(matched) if c is None]
    if unseen:
        new = [names[i] for i in unseen]
        tpl = _unseen_templates(entry, model.prompts.template, template)[0]
        fresh = MapleClassifier(model.clip, ClassPrompts(model.clip, new, tpl), model.learner,
                                label_slot=model.label_slot)
        rows.update(zip(unseen, normalize(fresh.encode_text(list(range(len(new)))))))
    return torch.stack([rows[i] for i in range(len(matched))])


def _zeroshot_rows(clip, names: list[str], template: str) -> torch.Tensor:
    return normalize(clip.encode_text([template.format(n) for n in names])).float()


# --------------------------------------------------------------------------- scorers

Scorer = Callable[[Target, list, "TargetInputs"], float]


@dataclass
class TargetInputs:
    """How a scorer reads a target's test images: cached features (shared store) or preprocessed images."""

    extractor: object  # the run's FeatureExtractor
    clip: object
    device: torch.device
    batch_size: int = 64
    _feats: dict = None
    text_cache: dict = field(default_factory=dict)  # text of a target's unseen classes, while it cannot change

    def features(self, target: Target) -> torch.Tensor:
        if self._feats is None:
            self._feats = {}
        if target.label not in self._feats:
            self._feats[target.label] = self.extractor.features(target.parts.test, desc=f"{target.label} test "
                                                                                         "image features")
        return self._feats[target.label]

    def image_batches(self, target: Target):
        reader = ImageReader(target.parts.test, self.clip.preprocess)
        loader = torch.utils.data.DataLoader(reader, batch_size=self.batch_size, shuffle=False)
        for x in loader:
            yield x.to(self.device)


def _accuracy(logits_batches, labels: np.ndarray) -> float:
    pred = torch.cat([lg.argmax(dim=1).cpu() for lg in logits_batches]).numpy()
    return 100.0 * float(np.mean(pred == labels)) if len(labels) else float("nan")


Logits = Callable[[torch.Tensor], torch.Tensor]


def reads_images(model: torch.nn.Module) -> bool:
    """Whether the :func:`class_logits` of ``model`` read preprocessed images (MaPLe, finetune) rather
    than CLIP image features."""
    return isinstance(model, MapleClassifier) or _kind(model) == "finetune"


def _kind(model: torch.nn.Module) -> Optional[str]:
    """Which of the open-vocabulary classifiers ``model`` is, or None for one that cannot score a class it
    has not trained."""
    if isinstance(model, PromptClassifier):
        return "prompt"
    if isinstance(model, MapleClassifier):
        return "maple"
    head, encoder = getattr(model, "head", None), getattr(model, "encoder", None)
    if head is not None and encoder is not None and hasattr(head, "init") and hasattr(head, "grow"):
        return "finetune"
    if all(hasattr(model, a) for a in ("adapter", "text", "embed")):
        return "adapter"
    return None


def class_logits(model: torch.nn.Module, entry, clip, names: list[str], matched: list[Optional[int]],
                 template: str, cache: Optional[dict] = None, key=None) -> Optional[Logits]:
    """How ``model`` (a strategy's model, in eval mode) scores the classes ``names``: a function from one
    batch of inputs -- CLIP image features, or preprocessed images where :func:`reads_images` -- to
    logits ``[B, len(names)]``; None when the model cannot score a class it has not trained.

    Args:
        matched: for each name, the run's label of the same trained class (scored with the model's text
            for it), or None (scored by name, in the prompt the strategy gives a class it has not trained).
        template: the names' dataset prompt (:func:`unseen_templates`).
        cache, key: where the text of untrained names is kept while it cannot change, and under what.
    """
    kind = _kind(model)
    if kind == "prompt":
        text = _prompt_names_text(model, entry, names, matched, template, {} if cache is None else cache, key)
        return lambda f: model.logit_scale * normalize(f.to(text.device).float().to(text.dtype)) @ text.t()
    if kind == "maple":
        text = _maple_names_text(model, entry, names, matched, template)

        def maple(x):
            with autocast(x.device, precision=clip.precision):
                f = model.image_features(x).to(text.dtype)
            return model.logit_scale * f @ text.t()
        return maple
    if kind == "finetune":
        return _finetune_logits(model, entry, clip, names, matched, template)
    if kind == "adapter":
        return _adapter_logits(model, entry, clip, names, matched, template)
    return None


def make_scorer(model: torch.nn.Module, entry) -> Optional[Scorer]:
    """A function scoring ``model`` (a strategy's model after some experience) on a target, or None when the
    strategy cannot score classes it has not trained (its rows then say "not applicable")."""
    if _kind(model) is None:
        return None
    # the features' batches: as many at once as the prompt classifier's (1024) and RAPF's scorers took
    batch = 1024

    def score(target, matched, inputs):
        logits = class_logits(model, entry, inputs.clip, target.parts.classnames, matched, target.template,
                              inputs.text_cache, target.label)
        if reads_images(model):
            out = [logits(x) for x in inputs.image_batches(target)]
        else:
            feats = inputs.features(target)
            out = [logits(feats[s: s + batch]) for s in range(0, len(feats), batch)]
        return _accuracy(out, target.parts.test.labels)
    return score


def _finetune_logits(model, entry, clip, names, matched, template) -> Logits:
    """Fine-tuned image encoder: its head's row for a trained class (the zero-shot row it started from
    when the class's experience has not come yet), CLIP's zero-shot row in the names' prompt otherwise."""
    head = model.head
    unseen = [i for i, c in enumerate(matched) if c is None]
    zs = (_zeroshot_rows(clip, [names[i] for i in unseen], _unseen_templates(entry, None, template)[0])
          * clip.logit_scale) if unseen else None
    rows, bias, u = [], [], 0
    for c in matched:
        if c is None:
            rows.append(zs[u].to(head.weight.device))
            bias.append(0.0)
            u += 1
        elif c < head.n_classes:
            rows.append(head.weight[c].detach())
            bias.append(float(head.bias[c]))
        else:
            rows.append(head.init[c].to(head.weight))
            bias.append(0.0)
    w, b = torch.stack(rows).float(), torch.tensor(bias, device=head.weight.device)

    def logits(x):
        with autocast(x.device, precision=clip.precision):
            f = normalize(model.encoder(x).float())
        return f.float() @ w.t() + b
    return logits


def _adapter_logits(model, entry, clip, names, matched, template) -> Logits:
    """RAPF: the adapted image feature against the kept text of trained classes, the names' text in
    RAPF's prompt otherwise."""
    unseen = [i for i, c in enumerate(matched) if c is None]
    zs = _zeroshot_rows(clip, [names[i] for i in unseen],
                        _unseen_templates(entry, None, template)[0]) if unseen else None
    rows, u = [], 0
    for c in matched:
        if c is None:
            rows.append(zs[u].to(model.text.device))
            u += 1
        else:
            rows.append(model.text[c])
    text = torch.stack(rows).float()

    def logits(f):
        with torch.autocast(model.text.device.type, enabled=False):
            return model.logit_scale * model.embed(f.to(model.text.device).float()) @ text.t()
    return logits


# --------------------------------------------------------------------------- one row per experience x target


def evaluate_targets(template, entry, t: int, plan: Plan, trained: DatasetParts, targets: list[Target],
                     inputs: TargetInputs) -> list[dict]:
    """Score the strategy (its Avalanche ``template``, after training experience ``t``) on every target.

    Returns:
        One row per target: ``experience, target, dataset, classes, matched, images, accuracy`` (percent;
        NaN when not applicable) and ``note`` (why there is no number, else empty).
    """
    model = template.model
    # a strategy that does not declare it scores untrained classes (register_strategy(..., scores_unseen=True))
    # gets "not applicable", whatever its model could do
    scorer = make_scorer(model, entry) if get_strategy(entry.name).scores_unseen else None
    was_training = model.training
    if was_training:  # after the run's own evaluation it is in eval mode already: its text cache stays
        model.eval()
    rows = []
    try:
        with torch.no_grad():
            for target in targets:
                matched = matched_labels(trained, plan, target.parts)
                acc = scorer(target, matched, inputs) if scorer is not None else float("nan")
                rows.append({"experience": t, "target": target.label, "dataset": target.parts.name,
                             "classes": target.n_classes, "matched": sum(c is not None for c in matched),
                             "images": len(target.parts.test), "accuracy": acc,
                             "note": "" if scorer is not None else NOT_APPLICABLE})
    finally:
        if was_training:
            model.train()
    return rows
