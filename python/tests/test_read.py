"""Reading: the imported posthoc-small cache equals the `.npy` files it came from."""

import shutil

import numpy as np
import pytest

import posthoc

SETS = {"id_train": "id_train", "id_test": "id_test", "isun": "ood_isun",
        "mnist": "ood_mnist", "tinyimagenet": "ood_tinyimagenet"}


def test_arrays_equal_the_npy_files(small_cache, fixture_dir):
    cache = posthoc.open(small_cache)
    assert set(cache.sets) == set(SETS)
    assert cache.sets["id_test"] == "id_test" and cache.sets["isun"] == "ood"
    for name, prefix in SETS.items():
        feat = np.load(fixture_dir / f"{prefix}_feat.npy")
        got = cache.features(name)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, feat)
        np.testing.assert_array_equal(cache.logits(name), np.load(fixture_dir / f"{prefix}_logits.npy"))
        labels = cache.labels(name)
        if prefix.startswith("id"):
            np.testing.assert_array_equal(labels, np.load(fixture_dir / f"{prefix}_labels.npy"))
        else:
            assert (labels == -1).all()
        paths = (fixture_dir / f"{prefix}_files.txt").read_text().splitlines()
        assert cache.split(name)["paths"] == paths
        np.testing.assert_array_equal(cache.index(name), np.arange(len(paths), dtype=np.uint64))
    w, b = cache.head
    np.testing.assert_array_equal(w, np.load(fixture_dir / "fc_weight.npy"))
    np.testing.assert_array_equal(b, np.load(fixture_dir / "fc_bias.npy"))


def test_manifest_stats_and_table(small_cache, fixture_dir):
    cache = posthoc.open(small_cache)
    m = cache.manifest
    assert m["model"]["id"] == "densenet-bc-100-cifar10-dice"
    assert m["model"]["class_names"][0] == "airplane"
    train = np.load(fixture_dir / "id_train_feat.npy").astype(np.float64)
    stats = cache.stats
    np.testing.assert_allclose(stats["mean"], train.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["mean"], np.load(fixture_dir / "train_mean.npy"), rtol=1e-6)
    assert stats["n_train"] == train.shape[0]
    q = stats["activation_percentiles"]
    i90 = int(np.argmin(np.abs(q["q"] - 90.0)))
    assert q["value_f32"][i90] == np.percentile(train.astype(np.float32), 90)
    pa = pytest.importorskip("pyarrow", reason="Cache.table needs pyarrow")
    table = cache.table("isun")
    assert isinstance(table, pa.Table)
    feats = np.stack(table.column("feature").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(feats, cache.features("isun"))


def test_file_errors_are_cache_errors(small_cache, tmp_path):
    with pytest.raises(posthoc.CacheError, match=r"opening cache .*nowhere"):
        posthoc.open(tmp_path / "nowhere")
    cache = posthoc.open(small_cache)
    with pytest.raises(posthoc.CacheError, match="no-such-set"):
        cache.features("no-such-set")
    # One flipped byte: caught by the sha256 check, not with verify=False.
    bad = tmp_path / "bad"
    shutil.copytree(small_cache, bad)
    f = bad / "ood-mnist.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(posthoc.CacheError, match="sha256"):
        posthoc.open(bad).features("mnist")
    with pytest.raises(posthoc.CacheError, match="sha256"):
        posthoc.open(bad).table("mnist")
