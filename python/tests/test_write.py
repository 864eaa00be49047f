"""Writing: CacheWriter output equals `import-npy`'s byte for byte; bad input is refused."""

import json

import numpy as np
import pytest

import posthoc
from conftest import CLASSES, MODEL_ID

PREFIXES = [("id_train", "id_train", "id_train"), ("id_test", "id_test", "id_test"),
            ("isun", "ood_isun", "ood"), ("mnist", "ood_mnist", "ood"),
            ("tinyimagenet", "ood_tinyimagenet", "ood")]


def write_fixture(fixture_dir, out, batch=3000, stop_after=None):
    """Writes the fixture's arrays through CacheWriter in batches (stops early if asked)."""
    head = (np.load(fixture_dir / "fc_weight.npy"), np.load(fixture_dir / "fc_bias.npy"))
    w = posthoc.CacheWriter(out, head=head, class_names=CLASSES.split(","), model_id=MODEL_ID,
                            preprocessing=None)
    written = 0
    for name, prefix, role in PREFIXES:
        feat = np.load(fixture_dir / f"{prefix}_feat.npy")
        logits = np.load(fixture_dir / f"{prefix}_logits.npy")
        labels = np.load(fixture_dir / f"{prefix}_labels.npy") if role != "ood" else None
        paths = (fixture_dir / f"{prefix}_files.txt").read_text().splitlines()
        for s in range(0, len(feat), batch):
            e = s + batch
            written += w.add(name, feat[s:e], logits=logits[s:e],
                             labels=None if labels is None else labels[s:e], paths=paths[s:e], role=role)
            if stop_after is not None and written >= stop_after:
                return w
    return w.finish()


def assert_same_cache(ours, theirs):
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (ours, theirs))
    assert a["files"] == b["files"]
    for k in ["format_version", "model", "preprocessing", "tool", "skipped"]:
        assert a[k] == b[k], k
    for f in b["files"]:
        assert (ours / f["name"]).read_bytes() == (theirs / f["name"]).read_bytes(), f["name"]


def test_writer_equals_import_npy_byte_for_byte(fixture_dir, small_cache, tmp_path):
    manifest = write_fixture(fixture_dir, tmp_path / "ours")
    assert manifest["model"]["id"] == MODEL_ID
    assert_same_cache(tmp_path / "ours", small_cache)
    cache = posthoc.open(tmp_path / "ours")
    np.testing.assert_array_equal(cache.features("mnist"), np.load(fixture_dir / "ood_mnist_feat.npy"))


def test_an_interrupted_write_resumes(fixture_dir, small_cache, tmp_path):
    out = tmp_path / "resumed"
    w = write_fixture(fixture_dir, out, batch=1000, stop_after=2500)
    del w
    assert (out / ".partial").is_dir() and not (out / "manifest.json").exists()
    write_fixture(fixture_dir, out, batch=700)
    assert_same_cache(out, small_cache)


def writer(tmp_path, m=4, c=3):
    rng = np.random.default_rng(0)
    head = (rng.standard_normal((c, m)).astype(np.float32), np.zeros(c, np.float32))
    return posthoc.CacheWriter(tmp_path / "bad", head=head, model_id="toy"), rng


def test_bad_input_raises_value_error(tmp_path):
    w, rng = writer(tmp_path)
    h = rng.random((5, 4), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="expected float32, got float64"):
        w.add("id_train", h.astype(np.float64), labels=y)
    with pytest.raises(ValueError, match="expected 2 dimensions"):
        w.add("id_train", h[0], labels=y)
    with pytest.raises(ValueError, match="feature"):
        w.add("id_train", rng.random((5, 3), dtype=np.float32), labels=y)
    nan = h.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="(?i)finite|nan"):
        w.add("id_train", nan, labels=y)
    with pytest.raises(ValueError, match="labels are required"):
        w.add("id_test", h)
    with pytest.raises(ValueError, match="role"):
        w.add("svhn", h, role="test")
    assert w.add("id_train", h, labels=y) == 5
    assert w.add("svhn", h, role="ood") == 5
    with pytest.raises(ValueError, match="set `id_train` was added already"):
        w.add("id_train", h, labels=y)
    w.add("id_test", h, labels=y)
    w.finish()
    cache = posthoc.open(tmp_path / "bad")
    np.testing.assert_array_equal(cache.features("svhn"), h)
    # Logits not given: W h + b in float64, rounded once.
    W, b = cache.head
    np.testing.assert_array_equal(cache.logits("svhn"), (h.astype(np.float64) @ W.T.astype(np.float64) + b).astype(np.float32))
