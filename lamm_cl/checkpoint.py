"""What lets a benchmark run survive a crash: per-experience checkpoints.

A checkpoint is written after every finished experience of the (strategy, seed)
in progress, to ``<out>/<strategy>/seed<k>/checkpoint.pt`` (atomically: a
temporary name, then a rename). It holds what an uninterrupted run would carry
into the next experience:

* the model's ``state_dict`` and every parameter's ``requires_grad`` flag,
* the optimiser's ``state_dict`` (momentum, learning rates),
* the state of the template's plugins (a replay buffer, LwF's previous model,
  Avalanche's clock, ...): a plugin with ``state_dict``/``load_state_dict`` is
  asked for it; any other plugin's attributes are pickled, naming the objects a
  checkpoint must not copy (the frozen CLIP, the benchmark's datasets, the live
  model and optimiser) by reference,
* the Python, NumPy and torch random states,
* the accuracy-matrix rows and per-class accuracies so far.

Restoring replays the model adaptation of the finished experiences (dynamic
modules such as LAMM's label table grow and freeze as they did), then loads the
states over it, so training continues bit for bit as if never stopped (on CPU).
"""
from __future__ import annotations

import io
import pickle
import random
import types
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from lamm_cl.errors import UserError
from lamm_cl.model.clip import FrozenCLIP
from lamm_cl.safe_io import atomic_write_bytes, remove_files, temporaries_of

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1  # bump when the checkpoint layout changes; older files are then refused


class CheckpointError(Exception):
    """A run's state cannot be checkpointed (e.g. a plugin holds something that cannot be pickled)."""


# --------------------------------------------------------------------------- random states


def rng_state() -> dict:
    """The Python, NumPy, torch (and CUDA, when in use) random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- objects named by reference


class References:
    """Objects a checkpoint names instead of copying, each under a stable key.

    The same keys are built for the run that saves and for the run that
    restores, so a replay buffer's samples point at the restored benchmark's
    datasets and a scheduler at the restored optimiser.
    """

    def __init__(self) -> None:
        self._key: dict[int, str] = {}
        self._obj: dict[str, Any] = {}
        self._storage: dict[int, str] = {}  # data pointer -> key of a tensor whose storage others may view

    def add_storage(self, key: str, tensor: torch.Tensor) -> None:
        """Name ``tensor`` and make every view of its storage (``t.detach()``, slices) a reference too."""
        self.add(key, tensor)
        self._storage.setdefault(tensor.untyped_storage().data_ptr(), key)

    def add(self, key: str, obj: Any) -> None:
        if obj is None:
            return
        self._key.setdefault(id(obj), key)
        self._obj[key] = obj

    def key_of(self, obj: Any) -> Optional[str]:
        if isinstance(obj, FrozenCLIP):  # copies too (a deep-copied model drags its CLIP along)
            return "clip"
        key = self._key.get(id(obj))
        return key if key is not None and self._obj[key] is obj else None

    def view_of(self, obj: Any) -> Optional[str]:
        """The key of the named tensor whose storage ``obj`` views, if any."""
        if not isinstance(obj, torch.Tensor) or not self._storage:
            return None
        try:
            return self._storage.get(obj.untyped_storage().data_ptr())
        except RuntimeError:  # tensors without storage (sparse, meta, ...)
            return None

    def get(self, key: str) -> Any:
        try:
            return self._obj[key]
        except KeyError:
            raise CheckpointError(f"the checkpoint refers to {key!r}, which this run does not have") from None


def clip_references(clip: FrozenCLIP) -> References:
    """The references to CLIP alone: the bundle, its model, and every parameter and buffer by storage
    (what a saved model refers to, :mod:`lamm_cl.saved_model`)."""
    refs = References()
    refs.add("clip", clip)
    refs.add("clip.model", clip.model)
    for name, t in [*clip.model.named_parameters(), *clip.model.named_buffers()]:
        refs.add_storage(f"clip:{name}", t)  # e.g. a label table's detached copy of the token embeddings
    return refs


def references(template, scenario, clip: FrozenCLIP) -> References:
    """The reference table of a run: its CLIP, template, model, optimiser, parameters and datasets."""
    refs = clip_references(clip)
    refs.add("template", template)
    refs.add("model", template.model)
    refs.add("optimizer", template.optimizer)
    for name, p in template.model.named_parameters():
        refs.add(f"param:{name}", p)
    for split in ("train", "test"):
        for t, exp in enumerate(getattr(scenario, f"{split}_stream")):
            refs.add(f"{split}:{t}", exp)
            refs.add(f"{split}:{t}:dataset", exp.dataset)
            # The leaves Avalanche builds subsets and concatenations of (a replay buffer holds those).
            flat = getattr(exp.dataset, "_flat_data", None)
            for i, leaf in enumerate(getattr(flat, "_datasets", [])):
                refs.add(f"{split}:{t}:leaf{i}", leaf)
    return refs


_ACTIVE: list[References] = []  # the table unpickling resolves against (a stack: loads do not nest, but be safe)


def _resolve(key: str) -> Any:
    if not _ACTIVE:
        raise CheckpointError(f"reference {key!r} read outside a checkpoint restore")
    return _ACTIVE[-1].get(key)


def _resolve_view(key: str, offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    return _resolve(key).detach().as_strided(size, stride, offset)


class ReferencePickler(pickle.Pickler):
    """A pickler that writes the objects of a reference table (:class:`References`, or anything with its
    ``key_of``/``view_of``) as references to their keys, for :func:`loads` or :func:`resolving` to resolve."""

    def __init__(self, file, refs: References):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._refs = refs

    def reducer_override(self, obj):
        key = self._refs.key_of(obj)
        if key is not None:
            return _resolve, (key,)
        key = self._refs.view_of(obj)
        if key is not None:
            return _resolve_view, (key, obj.storage_offset(), tuple(obj.shape), tuple(obj.stride()))
        return NotImplemented




@contextmanager
def resolving(refs: References):
    """While inside, unpickled references (of :class:`ReferencePickler`) resolve against ``refs``."""
    _ACTIVE.append(refs)
    try:
        yield
    finally:
        _ACTIVE.pop()


def dumps(obj: Any, refs: References) -> bytes:
    """Pickle ``obj``, writing the objects of ``refs`` as references to their keys."""
    buf = io.BytesIO()
    ReferencePickler(buf, refs).dump(obj)
    return buf.getvalue()


def loads(data: bytes, refs: References) -> Any:
    """Unpickle what :func:`dumps` wrote, resolving references against ``refs``."""
    _ACTIVE.append(refs)
    try:
        return pickle.loads(data)
    finally:
        _ACTIVE.pop()


# --------------------------------------------------------------------------- plugin states


def _is_code(value: Any) -> bool:
    # Functions and bound methods are how a plugin was configured, not state it gathered.
    return isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, partial))


def plugin_states(template, skip: Iterable[Any] = ()) -> list:
    """``[(index, class name, kind, state)]`` for the template's plugins, except those in ``skip``.

    ``kind`` is ``"state_dict"`` for a plugin that has ``state_dict``/``load_state_dict``,
    else ``"vars"`` (its attributes, minus functions).
    """
    skipped = {id(p) for p in skip}
    out = []
    for i, p in enumerate(template.plugins):
        if id(p) in skipped:
            continue
        if callable(getattr(p, "state_dict", None)) and callable(getattr(p, "load_state_dict", None)):
            out.append((i, type(p).__qualname__, "state_dict", p.state_dict()))
        else:
            out.append((i, type(p).__qualname__, "vars", {k: v for k, v in vars(p).items() if not _is_code(v)}))
    return out


def load_plugin_states(template, states: list) -> None:
    """Put the states of :func:`plugin_states` back into the (freshly built) template's plugins."""
    for i, name, kind, state in states:
        if i >= len(template.plugins) or type(template.plugins[i]).__qualname__ != name:
            raise CheckpointError(f"plugin {i} was a {name} when the checkpoint was written; the strategy's "
                                  "plugins have changed since")
        p = template.plugins[i]
        if kind == "state_dict":
            p.load_state_dict(state)
        else:
            vars(p).update(state)


_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))  # _parameters, _buffers, _modules, hooks, training, ...


def module_extras(model: torch.nn.Module) -> dict:
    """Each submodule's plain attributes, beyond its parameters and buffers: the class lists,
    frozen/trainable sets and cached text features that dynamic modules keep outside the state_dict.

    Restoring them (not recomputing them) keeps a resumed run bit-identical: a cached feature
    computed in a batch of other classes can differ in the last bit from one computed alone.
    """
    return {name: {k: v for k, v in vars(m).items() if k not in _MODULE_INTERNALS and not _is_code(v)}
            for name, m in model.named_modules()}


def load_module_extras(model: torch.nn.Module, extras: dict) -> None:
    """Put :func:`module_extras` back, submodule by submodule."""
    for name, m in model.named_modules():
        vars(m).update(extras.get(name, {}))


# --------------------------------------------------------------------------- save / load / restore


def save(path: Path, *, template, refs: References, skip_plugins: Iterable[Any], experience: int,
         matrix: np.ndarray, matrix_task_aware: np.ndarray, per_class: dict, seconds: float, meta: dict) -> Path:
    """Write the checkpoint of a run that has finished ``experience`` (0-based) to ``path``, atomically.

    Raises:
        CheckpointError: some plugin state cannot be pickled.
    """
    try:
        # One pickle, so objects the model and the plugins share stay shared.
        extras = dumps({"model": module_extras(template.model), "plugins": plugin_states(template, skip_plugins)},
                       refs)
    except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"the model's or a plugin's state cannot be saved ({type(e).__name__}: {e})") from None
    payload = {
        "format": FORMAT,
        "meta": meta,
        "experience": experience,
        "matrix": np.asarray(matrix, dtype=float).tolist(),
        "matrix_task_aware": np.asarray(matrix_task_aware, dtype=float).tolist(),
        "per_class": {int(k): float(v) for k, v in per_class.items()},
        "seconds": float(seconds),
        "model": template.model.state_dict(),
        "requires_grad": {n: p.requires_grad for n, p in template.model.named_parameters()},
        "optimizer": template.optimizer.state_dict(),
        "extras": extras,
        "rng": rng_state(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load(path: Path) -> dict:
    """Read a checkpoint written by :func:`save`.

    Raises:
        UserError: the file is unreadable or from another lamm-cl version (one line, naming it).
    """
    try:
        # Our own file in the user's results folder; it pickles plugin state, so it is not weights-only.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any unreadable checkpoint is the same problem for the user
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                        "delete it to restart that run from its first experience") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint of this lamm-cl version; delete it to restart that run "
                        "from its first experience")
    if not isinstance(state.get("meta", {}), dict):
        raise _malformed(path, f"'meta' is a {type(state['meta']).__name__}")
    return state


def check_fields(state: dict, path: Path) -> None:
    """Refuse a loaded checkpoint whose fields are structurally wrong (damaged or edited by hand).

    Raises:
        UserError: one line naming the file and the field.
    """
    wrong = _structure_problem(state)
    if wrong:
        raise _malformed(path, wrong)


def _malformed(path: Path, wrong: str) -> UserError:
    return UserError(f"{path}: malformed checkpoint ({wrong}); delete it to restart that run from its first "
                     "experience")


# field -> what it must be; a checkpoint is our own file, so anything else means it was damaged or hand-edited
_FIELDS = {"meta": dict, "experience": int, "matrix": list, "matrix_task_aware": list, "per_class": dict, "seconds": (int, float),
           "model": dict, "requires_grad": dict, "optimizer": dict, "extras": bytes, "rng": dict}


def _structure_problem(state: dict) -> str:
    """What is structurally wrong with a loaded checkpoint, or ``""``."""
    for name, kind in _FIELDS.items():
        if name not in state:
            return f"no {name!r}"
        if not isinstance(state[name], kind) or isinstance(state[name], bool):
            return f"{name!r} is a {type(state[name]).__name__}"
    if state["experience"] < 0:
        return f"'experience' is {state['experience']}"
    m = state["matrix"]
    if not m or not all(isinstance(r, list) and len(r) == len(m) for r in m):
        return "'matrix' is not square"
    if state["experience"] >= len(m) - 1:
        return f"'experience' {state['experience']} is not before the last of {len(m)}"
    try:
        np.asarray(m, dtype=float)
        {int(k): float(v) for k, v in state["per_class"].items()}
    except (TypeError, ValueError):
        return "'matrix' or 'per_class' holds something that is not a number"
    if not {"python", "numpy", "torch"} <= set(state["rng"]):
        return "'rng' lacks a random state"
    return ""


def replay_adaptation(template, scenario, upto: int) -> None:
    """Grow the model as training on experiences 0..upto (and evaluating on test 0..k after each) did.

    Avalanche adapts the model and registers its new parameters with the optimiser
    at the start of each training experience; doing the same here gives a fresh
    template the parameters (and frozen/trainable flags) the checkpoint's states fit.
    """
    for k in range(upto + 1):
        template.is_training = True
        template.experience = scenario.train_stream[k]
        check = getattr(template, "check_model_and_optimizer", None)
        if check is not None:
            check()
        else:
            template.model = template.model_adaptation()
            template.make_optimizer()
        template.is_training = False
        for j in range(k + 1):  # evaluation adapts too (a no-op for the built-in models)
            template.experience = scenario.test_stream[j]
            template.model = template.model_adaptation()
    template.experience = None


def restore(template, scenario, state: dict, refs_of) -> None:
    """Bring a freshly built ``template`` to the checkpointed point.

    Args:
        template: built exactly as the checkpointed run built it.
        scenario: the same benchmark streams.
        state: what :func:`load` returned.
        refs_of: ``template -> References`` (built after the model has grown).

    Raises:
        CheckpointError: the checkpoint does not fit the template (the strategy's code changed).
    """
    replay_adaptation(template, scenario, state["experience"])
    model = template.model
    try:
        model.load_state_dict(state["model"])
        template.optimizer.load_state_dict(state["optimizer"])
        extras = loads(state["extras"], refs_of(template))
    except (RuntimeError, ValueError, KeyError, AttributeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"it does not fit this strategy: {type(e).__name__}: {' '.join(str(e).split())[:200]}") \
            from None
    for name, p in model.named_parameters():
        if name in state["requires_grad"]:
            p.requires_grad_(state["requires_grad"][name])
    load_module_extras(model, extras["model"])
    load_plugin_states(template, extras["plugins"])
    set_rng_state(state["rng"])


def remove(path: Path) -> None:
    """Delete a checkpoint and any temporary file an interrupted write left beside it."""
    path = Path(path)
    remove_files(path, *temporaries_of(path))
