"""posthoc: post-hoc OOD detection on a feature cache, from Python.

``posthoc.open(path)`` reads a cache written by ``posthoc precompute``, ``posthoc cache
import-npy`` or :class:`CacheWriter`; ``posthoc.evaluate(cache, ...)`` runs the same
evaluate code as ``posthoc eval`` and returns its ``--json`` rows as a DataFrame.

Errors: :class:`CacheError` for missing, unfinished or corrupt cache files;
``ValueError`` for bad parameters. Messages are those of the CLI.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from typing import Any, Dict, List, Tuple

import numpy as np

from ._posthoc import CacheError, open_cache
from ._posthoc import RawWriter as _RawWriter
from ._posthoc import evaluate as _evaluate

__all__ = ["CacheError", "Cache", "CacheWriter", "open", "evaluate"]

# Parameter columns in the order the CLI prints them (`posthoc::report::PARAM_KEYS`).
_PARAM_ORDER = ["p", "clip", "clip_percentile", "temperature", "p_a", "p_w"]


class Cache:
    """An open, finished feature cache.

    Reads check each file's sha256 against the manifest (unless opened with
    ``verify=False``). Arrays come from Rust without a copy; the one copy is Parquet/Arrow
    -> Rust array while reading (fixed-size-list columns are decoded row group by row
    group, so an Arrow buffer of the whole column never exists to share).
    """

    def __init__(self, raw):
        self._raw = raw
        self._manifest = None

    @property
    def path(self) -> str:
        """The cache directory."""
        return os.fspath(self._raw.dir)

    @property
    def manifest(self) -> Dict[str, Any]:
        """``manifest.json`` as a dict."""
        if self._manifest is None:
            self._manifest = json.loads(self._raw.manifest_json())
        return self._manifest

    @property
    def sets(self) -> Dict[str, str]:
        """Split name -> role (``id_train``, ``id_test``, ``ood``), in manifest order."""
        return {name: role for name, role, _ in self._raw.splits()}

    def _role_sets(self, role: str) -> List[str]:
        return [s for s, r in self.sets.items() if r == role]

    @property
    def id_train(self) -> str | None:
        """Name of the ID-train split, if any."""
        return next(iter(self._role_sets("id_train")), None)

    @property
    def id_test(self) -> str | None:
        """Name of the ID-test split, if any."""
        return next(iter(self._role_sets("id_test")), None)

    @property
    def ood_sets(self) -> List[str]:
        """Names of the OOD sets."""
        return self._role_sets("ood")

    def features(self, set: str) -> np.ndarray:
        """Penultimate features of ``set``, float32 ``n x m``."""
        return self._raw.features(set)[0]

    def labels(self, set: str) -> np.ndarray:
        """Labels of ``set``, int32 ``n`` (-1 for OOD rows)."""
        return self._raw.features(set)[1]

    def index(self, set: str) -> np.ndarray:
        """Dataset-order index of each row of ``set``, uint64 ``n``."""
        return self._raw.features(set)[2]

    def logits(self, set: str) -> np.ndarray:
        """Logits of ``set``, float32 ``n x C``."""
        return self._raw.split(set)["logits"]

    def split(self, set: str) -> Dict[str, Any]:
        """Every column of ``set``: index, paths, labels, features, logits."""
        return self._raw.split(set)

    @property
    def head(self) -> Tuple[np.ndarray, np.ndarray]:
        """The linear head ``(W, b)``: float32 ``C x m`` and ``C``."""
        return self._raw.head()

    @property
    def stats(self) -> Dict[str, Any]:
        """ID-train statistics (``mean``, ``class_means``, ``activation_percentiles``, ...)."""
        return self._raw.stats()

    def table(self, set: str):
        """The Parquet file of ``set`` as a ``pyarrow.Table`` (needs pyarrow).

        The file's sha256 is checked against the manifest first unless the cache was
        opened with ``verify=False``.
        """
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Cache.table needs pyarrow: pip install pyarrow") from e
        files = {name: file for name, _, file in self._raw.splits()}
        if set not in files:
            raise CacheError(
                f"cache {self.path} has no split `{set}` (it has: {', '.join(files)})"
            )
        path = os.path.join(self.path, files[set])
        if self._verify:
            entry = next(f for f in self.manifest["files"] if f["name"] == files[set])
            digest = hashlib.sha256()
            with builtins.open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise CacheError(
                    f"{path}: sha256 {digest.hexdigest()} does not match the manifest's {entry['sha256']}"
                )
        return pq.read_table(path)

    def __repr__(self) -> str:
        m = self.manifest["model"]
        return (
            f"posthoc.Cache({self.path!r}: model {m['id']}, m = {m['feature_dim']}, "
            f"C = {m['num_classes']}, sets {list(self.sets)})"
        )


def open(path, verify: bool = True) -> Cache:  # noqa: A001 - the package's entry point
    """Opens the finished cache at ``path``: a directory or a URL.

    URLs are those of ``posthoc eval --cache``: ``file://``, ``s3://bucket/prefix``,
    ``gs://``, ``az://`` and read-only ``http(s)://``, with the stores' usual environment
    variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). A remote cache is
    downloaded once into the local content-addressed store (``$POSTHOC_CACHE_DIR``,
    default ``~/.cache/posthoc``; each file's sha256 checked on arrival) and read from
    there (``Cache.path``). ``verify=False`` skips the sha256 checks on reads (sizes,
    schemas, dims and values are still checked). Raises :class:`CacheError` when the
    location is not a finished cache.
    """
    cache = Cache(open_cache(os.fspath(path), verify))
    cache._verify = verify
    return cache


def _cli_list(value) -> str:
    """A keyword value as the CLI's comma list: ``[0, 50, 90]`` -> ``"0,50,90"``."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(_cli_list(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"expected a number or a list of numbers, got {value!r}")
    return str(value.item() if isinstance(value, np.generic) else value)


def _frame(records: List[Dict[str, Any]], as_: str):
    """Long-format rows (params flattened into columns) as pandas, polars or a list."""
    keys = [k for k in _PARAM_ORDER if any(k in r["params"] for r in records)]
    keys += sorted({k for r in records for k in r["params"]} - set(keys))
    flat = []
    for r in records:
        row = {"method": r["method"]}
        row.update({k: r["params"].get(k) for k in keys})
        row.update({k: v for k, v in r.items() if k not in ("method", "params")})
        flat.append(row)
    if as_ == "records":
        return flat
    if as_ == "pandas":
        import pandas as pd

        return pd.DataFrame.from_records(flat, columns=list(flat[0]) if flat else None)
    if as_ == "polars":
        import polars as pl

        return pl.DataFrame(flat)
    raise ValueError(f"as_={as_!r}: expected `pandas`, `polars` or `records`")


def evaluate(
    cache=None,
    method=None,
    *,
    config=None,
    ood=None,
    convention=None,
    select=None,
    val_ood=None,
    val_fraction=None,
    scores: bool = False,
    verify: bool = True,
    as_: str = "pandas",
    **params,
):
    """Runs ``posthoc eval`` on ``cache`` and returns its ``--json`` rows as a DataFrame.

    ``cache``: a :class:`Cache`, a path or a URL (default: the config's ``[eval] cache``).
    ``method``: a name or list (``"dice"``, ``["energy", "react"]``); keyword parameters
    are swept like the CLI's flags, as numbers, lists or CLI strings: ``p=[0, 50, 90]``,
    ``clip="p90"``, ``temperature=1``, ``p_a=..., p_w=...``. Without ``method``,
    ``config="configs/x.toml"`` runs its ``[[eval.run]]`` sweep. ``ood``: OOD sets to
    report; ``convention``: ``"sklearn"`` (default), ``"dice"`` or ``"openood"``.
    ``select="auroc"`` (or ``"fpr95"``) with ``val_ood=SET`` picks each method's best
    setting on that OOD set and a held-out ``val_fraction`` (default 0.2) of the ID-test
    rows, as ``posthoc eval --select``: the rows then carry ``selected``.

    One row per (method, params, OOD set) plus an ``average`` row per setting, columns
    ``method``, the parameters, ``id_set``, ``ood_set``, ``n_id``, ``n_ood``, ``fpr95``,
    ``auroc``, ``aupr_in``, ``aupr_out``, ``id_accuracy``, ``convention``. With
    ``scores=True`` returns ``(frame, scores)``, ``scores`` a list (one per setting) of
    dicts ``method``, ``params``, ``id`` (ID-test scores) and ``ood`` (set -> scores).
    ``as_="polars"`` returns a polars frame, ``as_="records"`` a list of dicts.
    """
    if isinstance(cache, (str, os.PathLike)):
        cache = open(cache, verify=verify)
    if isinstance(method, (list, tuple)):
        method = ",".join(method)
    if isinstance(ood, str):
        ood = [ood]
    raw = cache._raw if cache is not None else None
    rows, per_setting = _evaluate(
        raw,
        None,
        verify,
        method,
        {k: _cli_list(v) for k, v in params.items()},
        os.fspath(config) if config is not None else None,
        list(ood) if ood is not None else None,
        convention,
        select,
        val_ood,
        None if val_fraction is None else _cli_list(val_fraction),
        scores,
    )
    frame = _frame(json.loads(rows), as_)
    if not scores:
        return frame
    for s in per_setting:
        s["params"] = json.loads(s["params"])
    return frame, per_setting


def _array(name: str, value, dtype, ndim: int) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``; ``ValueError`` for another kind."""
    a = np.asarray(value)
    kinds = {np.float32: "f", np.int32: "iu"}[dtype]
    if a.dtype.kind not in kinds or (dtype is np.float32 and a.dtype != np.float32):
        raise ValueError(f"{name}: expected {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if dtype is np.int32 and a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name}: values out of int32 range")
    return np.ascontiguousarray(a, dtype=dtype)


class CacheWriter:
    """Writes a posthoc cache from arrays, as ``posthoc cache import-npy`` does.

    ``CacheWriter(out, head=(W, b), class_names=[...], model_id=..., preprocessing={...})``
    then ``add(set, features, logits=None, labels=None, paths=None, role=...)`` in batches
    (one set after another; row ``index`` = row number within the set), then ``finish()``,
    which computes the ID-train statistics and writes ``manifest.json`` last. Until then
    everything lives in ``out/.partial``: running the same script again over an
    interrupted ``out`` resumes (rows committed before are skipped). Arrays: features and
    logits float32 (``n x m``, ``n x C``), labels integer (``n``; ``-1`` for OOD,
    default for ``role="ood"``); missing logits are computed as ``W h + b`` in float64.
    Wrong dtypes or shapes, NaN, a set added twice and bad roles raise ``ValueError``.
    """

    def __init__(self, out, head, class_names=None, model_id="python", preprocessing=None,
                 checkpoint_sha256=None):
        w, b = head
        self._raw = _RawWriter(
            os.fspath(out), _array("head W", w, np.float32, 2), _array("head b", b, np.float32, 1),
            model_id, None if class_names is None else list(class_names),
            json.dumps({} if preprocessing is None else preprocessing), checkpoint_sha256,
        )
        self.manifest = None

    def add(self, set: str, features, logits=None, labels=None, paths=None, role: str | None = None) -> int:
        """Appends a batch of ``set``; returns the rows written (0 when resumed past them).

        ``role`` defaults to ``set`` for ``id_train``/``id_test`` and must be given otherwise.
        """
        if role is None:
            if set not in ("id_train", "id_test"):
                raise ValueError(f"set `{set}`: give role= (`id_train`, `id_test` or `ood`)")
            role = set
        feats = _array(f"{set} features", features, np.float32, 2)
        z = None if logits is None else _array(f"{set} logits", logits, np.float32, 2)
        y = None if labels is None else _array(f"{set} labels", labels, np.int32, 1)
        return self._raw.add(set, role, feats, z, y, None if paths is None else [str(p) for p in paths])

    def finish(self) -> Dict[str, Any]:
        """Closes the last set, computes the statistics, writes the manifest; returns it."""
        self.manifest = json.loads(self._raw.finish())
        return self.manifest
