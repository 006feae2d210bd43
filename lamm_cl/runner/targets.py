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
    opts = entry.options
    ensemble = getattr(opts, "templates", None)
    if ensemble:
        return list(ensemble)
    template = getattr(opts, "template", None)
    if entry.name in ("zeroshot", "finetune") or template == "dataset":
        return [target.template]
    if isinstance(template, str) and template.count("{}") == 1:
        return [template]
    return [own or target.template]


# --------------------------------------------------------------------------- text of a target's classes


def _prompt_text(model: PromptClassifier, entry, target: Target, matched: list[Optional[int]],
                 cache: dict) -> torch.Tensor:
    """Normalised text features ``[C, D]`` of the target's classes with a CoOp/LAMM prompt classifier: the
    model's own text for trained classes (its label vectors where it has them), names otherwise.

    A class the model already scores is read from the model's own text features (cached by the model,
    so no text pass); the unseen classes' text is kept in ``cache`` while the prompt cannot change
    (no shared context)."""
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
        templates = unseen_templates(entry, model.encoder.prompts.template, target)
        key = (target.label, tuple(templates))
        if model.context is not None or key not in cache:
            cache[key] = _unseen_text(model, [target.parts.classnames[i] for i in unseen], templates)
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
    rows: dict[int, torch.Tensor] = {}
    known = [(i, c) for i, c in enumerate(matched) if c is not None]
    if known:
        classes = [c for _, c in known]
        table = model.labels
        labels = {c: table.vectors[str(c)] for c in classes if str(c) in table.vectors} if table is not None else None
        rows.update(zip((i for i, _ in known), normalize(model._encode_tables(classes, [labels]))))
    unseen = [i for i, c in enumerate(matched) if c is None]
    if unseen:
        names = [target.parts.classnames[i] for i in unseen]
        tpl = unseen_templates(entry, model.prompts.template, target)[0]
        fresh = MapleClassifier(model.clip, ClassPrompts(model.clip, names, tpl), model.learner,
                                label_slot=model.label_slot)
        rows.update(zip(unseen, normalize(fresh.encode_text(list(range(len(names)))))))
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


def _feature_logits(feats: torch.Tensor, text: torch.Tensor, scale: float, batch: int = 1024):
    for s in range(0, len(feats), batch):
        f = normalize(feats[s: s + batch].to(text.device).float().to(text.dtype))
        yield scale * f @ text.t()


def make_scorer(model: torch.nn.Module, entry) -> Optional[Scorer]:
    """A function scoring ``model`` (a strategy's model after some experience) on a target, or None when the
    strategy cannot score classes it has not trained (its rows then say "not applicable")."""
    if isinstance(model, PromptClassifier):
        def score(target, matched, inputs):
            text = _prompt_text(model, entry, target, matched, inputs.text_cache)
            return _accuracy(_feature_logits(inputs.features(target), text, model.logit_scale),
                             target.parts.test.labels)
        return score
    if isinstance(model, MapleClassifier):
        def score(target, matched, inputs):
            text = _maple_text(model, entry, target, matched)
            out = []
            for x in inputs.image_batches(target):
                with autocast(inputs.device, precision=inputs.clip.precision):
                    f = model.image_features(x).to(text.dtype)
                out.append(model.logit_scale * f @ text.t())
            return _accuracy(out, target.parts.test.labels)
        return score
    head, encoder = getattr(model, "head", None), getattr(model, "encoder", None)
    if head is not None and encoder is not None and hasattr(head, "init") and hasattr(head, "grow"):
        return _finetune_scorer(model, entry)
    if all(hasattr(model, a) for a in ("adapter", "text", "embed")):
        return _adapter_scorer(model, entry)
    return None


def _finetune_scorer(model, entry) -> Scorer:
    """Fine-tuned image encoder: its head's row for a trained class (the zero-shot row it started from
    when the class's experience has not come yet), CLIP's zero-shot row in the target's prompt otherwise."""
    def score(target, matched, inputs):
        clip, head = inputs.clip, model.head
        unseen = [i for i, c in enumerate(matched) if c is None]
        zs = (_zeroshot_rows(clip, [target.parts.classnames[i] for i in unseen],
                             unseen_templates(entry, None, target)[0]) * clip.logit_scale) if unseen else None
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
        out = []
        for x in inputs.image_batches(target):
            with autocast(inputs.device, precision=inputs.clip.precision):
                f = normalize(model.encoder(x).float())
            out.append(f.float() @ w.t() + b)
        return _accuracy(out, target.parts.test.labels)
    return score


def _adapter_scorer(model, entry) -> Scorer:
    """RAPF: the adapted image feature against the kept text of trained classes, the names' text in
    RAPF's prompt otherwise."""
    def score(target, matched, inputs):
        clip = inputs.clip
        unseen = [i for i, c in enumerate(matched) if c is None]
        zs = _zeroshot_rows(clip, [target.parts.classnames[i] for i in unseen],
                            unseen_templates(entry, None, target)[0]) if unseen else None
        rows, u = [], 0
        for c in matched:
            if c is None:
                rows.append(zs[u].to(model.text.device))
                u += 1
            else:
                rows.append(model.text[c])
        text = torch.stack(rows).float()
        feats = inputs.features(target)
        out = []
        for s in range(0, len(feats), 1024):
            with torch.autocast(model.text.device.type, enabled=False):
                out.append(model.logit_scale * model.embed(feats[s: s + 1024].to(model.text.device).float()) @ text.t())
        return _accuracy(out, target.parts.test.labels)
    return score


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
