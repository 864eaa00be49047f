"""A posthoc cache from any PyTorch classifier: :func:`extract`.

Pure Python; needs ``torch`` (imported when this module is) and uses ``tqdm`` for
progress bars when it is installed.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("posthoc.torch needs PyTorch: pip install 'posthoc[torch]' (or torch)") from e

from . import Cache, CacheWriter
from . import open as _open_cache

__all__ = ["extract"]

_ID_ROLES = ("id_train", "id_test")


def _set_and_role(key: str):
    """A ``loaders`` key as ``(set, role)``: ``id_train``, ``id_test``, ``ood/<name>``."""
    if key in _ID_ROLES:
        return key, key
    if key.startswith("ood/") and len(key) > 4:
        return key[4:], "ood"
    raise ValueError(
        f"loaders key {key!r}: expected `id_train`, `id_test` or `ood/<name>`"
    )


def _default_head(model: "torch.nn.Module") -> "torch.nn.Linear":
    """The last ``torch.nn.Linear`` registered in ``model``."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("model has no torch.nn.Linear layer: pass head= (the final linear layer)")
    return linears[-1]


def _batch_inputs(key: str, batch):
    """``(x, y)`` of one loader batch: a tensor ``x``, or ``(x, y, ...)``; ``y`` may be None."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise ValueError(
        f"loader `{key}`: a batch must be a tensor or an (x, y, ...) tuple of tensors, "
        f"got {type(batch).__name__}"
    )


def _progress(loader, desc: str, enabled: bool):
    """``loader`` wrapped in a tqdm bar when ``enabled`` and tqdm is installed."""
    if not enabled:
        return loader
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return loader
    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(loader, desc=desc, total=total, unit="batch")


def _sample_paths(loader) -> Optional[Sequence[str]]:
    """File paths of an unshuffled loader over a torchvision folder dataset (``.samples``
    or ``.imgs``: ``(path, label)`` in dataset order), else None."""
    samples = getattr(getattr(loader, "dataset", None), "samples", None)
    if samples is None:
        samples = getattr(getattr(loader, "dataset", None), "imgs", None)
    if samples is None or not isinstance(getattr(loader, "sampler", None), torch.utils.data.SequentialSampler):
        return None
    return [os.fspath(s[0]) for s in samples]


def _class_names(loaders: Mapping[str, Any], num_classes: int) -> Optional[Sequence[str]]:
    """The ID loaders' ``dataset.classes`` (torchvision datasets), when it has ``C`` names."""
    for key in _ID_ROLES:
        names = getattr(getattr(loaders.get(key), "dataset", None), "classes", None)
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
    return None


def extract(
    model: "torch.nn.Module",
    loaders: Mapping[str, Iterable],
    out,
    head: Optional["torch.nn.Linear"] = None,
    *,
    model_id: str = "torch",
    class_names: Optional[Sequence[str]] = None,
    preprocessing: Optional[Dict[str, Any]] = None,
    checkpoint_sha256: Optional[str] = None,
    device=None,
    progress: bool = True,
) -> Cache:
    """Runs ``model`` over each loader once and writes a posthoc cache at ``out``.

    A forward hook on ``head`` (the final ``torch.nn.Linear``; default: the last one
    registered in ``model``) captures its input, the penultimate feature ``h`` (``n x m``),
    and its output, the logits ``z = W h + b`` (``n x C``); ``W``, ``b`` of that layer are
    the cache's head. ``loaders``: ``{"id_train": ..., "id_test": ..., "ood/<name>": ...}``,
    each an iterable of batches ``x`` or ``(x, y, ...)`` (a ``DataLoader``); labels ``y``
    are required for the ID sets and ignored for OOD sets (stored as -1). Sets are
    written in the order of ``loaders``; row ``index`` is the row number in the set, and its
    ``path`` the file's for an unshuffled loader over a torchvision folder dataset
    (``ImageFolder``: ``dataset.samples``), else the index.

    The model runs in eval mode under ``torch.no_grad()`` on ``device`` (default: the
    device of its first parameter); its training mode is restored and the hook removed
    afterwards. ``class_names`` default to the ID dataset's ``.classes`` when present.
    Writing goes through :class:`posthoc.CacheWriter` (atomic; an interrupted ``out`` is
    resumed, the forward passes re-run and committed rows skipped). Returns the opened
    cache.
    """
    if not loaders:
        raise ValueError("loaders: give at least `id_train` (and `id_test`, `ood/<name>` sets)")
    sets = [(key, *_set_and_role(key)) for key in loaders]
    head = _default_head(model) if head is None else head
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"head: expected a torch.nn.Linear, got {type(head).__name__}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    weight = head.weight.detach().to(torch.float32).cpu().numpy()
    bias = (
        head.bias.detach().to(torch.float32).cpu().numpy()
        if head.bias is not None
        else np.zeros(weight.shape[0], dtype=np.float32)
    )
    if class_names is None:
        class_names = _class_names(loaders, weight.shape[0])
    writer = CacheWriter(
        out, head=(weight, bias), class_names=class_names, model_id=model_id,
        preprocessing=preprocessing, checkpoint_sha256=checkpoint_sha256,
    )

    captured = []

    def hook(_module, inputs, output):
        captured.append((inputs[0].detach(), output.detach()))

    was_training = model.training
    handle = head.register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            for key, set_name, role in sets:
                batches, rows = 0, 0
                paths = _sample_paths(loaders[key])
                for batch in _progress(loaders[key], set_name, progress):
                    x, y = _batch_inputs(key, batch)
                    if role != "ood" and y is None:
                        raise ValueError(
                            f"loader `{key}`: labels are required for {role} (batches of (x, y))"
                        )
                    captured.clear()
                    model(x.to(device))
                    if len(captured) != 1:
                        raise ValueError(
                            f"loader `{key}`: the head ran {len(captured)} times in one forward "
                            "pass (expected once): pass head= the final linear layer"
                        )
                    h, z = captured[0]
                    if h.ndim != 2:
                        raise ValueError(
                            f"loader `{key}`: the head's input has shape {tuple(h.shape)}; "
                            "expected (batch, features)"
                        )
                    writer.add(
                        set_name,
                        h.to(torch.float32).cpu().numpy(),
                        logits=z.to(torch.float32).cpu().numpy(),
                        labels=None if role == "ood" else y.cpu().numpy().astype(np.int64),
                        paths=None if paths is None else paths[rows:rows + len(h)],
                        role=role,
                    )
                    batches, rows = batches + 1, rows + len(h)
                if batches == 0:
                    raise ValueError(f"loader `{key}` yielded no batches")
    finally:
        handle.remove()
        model.train(was_training)
    writer.finish()
    return _open_cache(os.fspath(out))
