"""`posthoc.open` on URLs: file://, http:// (a local HTTP server) and s3:// (moto's real S3
server, started by scripts/s3-test-server.py as tests/s3_store.rs does; skipped with a
message where its venv is absent)."""

import functools
import http.server
import json
import os
import pathlib
import subprocess
import threading

import numpy as np
import pytest

import posthoc
from conftest import REPO, run_cli

BUCKET = "posthoc-test"


def assert_same_cache(remote, local):
    """`remote` reads as `local`: manifest, every split, head and evaluate rows."""
    assert remote.manifest == local.manifest
    for name in local.sets:
        np.testing.assert_array_equal(remote.features(name), local.features(name))
        np.testing.assert_array_equal(remote.labels(name), local.labels(name))
    np.testing.assert_array_equal(remote.head[0], local.head[0])
    rows = posthoc.evaluate(remote, method="energy,dice", p=[0, 90], as_="records")
    assert rows == posthoc.evaluate(local, method="energy,dice", p=[0, 90], as_="records")


@pytest.fixture()
def downloads(tmp_path, monkeypatch):
    """A fresh download store (POSTHOC_CACHE_DIR) for this test."""
    store = tmp_path / "downloads"
    monkeypatch.setenv("POSTHOC_CACHE_DIR", str(store))
    return store


def test_file_url_is_the_directory(small_cache):
    cache = posthoc.open(pathlib.Path(small_cache).as_uri())
    assert pathlib.Path(cache.path) == pathlib.Path(small_cache)
    assert cache.sets == posthoc.open(small_cache).sets


def test_http_url_downloads_once_and_reads_as_local(small_cache, downloads):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(small_cache))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        remote = posthoc.open(url)
        assert pathlib.Path(remote.path).is_relative_to(downloads)
        assert_same_cache(remote, posthoc.open(small_cache))
        table = remote.table("id_test")
        assert table.num_rows == len(remote.labels("id_test"))
    finally:
        server.shutdown()
        server.server_close()


def test_missing_url_is_a_cache_error(downloads):
    with pytest.raises(posthoc.CacheError, match="opening cache http://127.0.0.1:9/none"):
        posthoc.open("http://127.0.0.1:9/none")
    with pytest.raises(posthoc.CacheError, match="unknown scheme `ftp`"):
        posthoc.open("ftp://host/x")


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server with bucket `posthoc-test`: its JSON line (endpoint, keys)."""
    python = pathlib.Path(os.environ.get("POSTHOC_MOTO_PYTHON",
                                         REPO.parent / "posthoc-venv-moto" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"skipping: no moto venv at {python} (.ci/run creates it; or set POSTHOC_MOTO_PYTHON)")
    proc = subprocess.Popen([str(python), str(REPO / "scripts" / "s3-test-server.py"), BUCKET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        try:
            info = json.loads(line)
        except json.JSONDecodeError:
            pytest.skip("skipping: the moto S3 server did not start")
        yield info
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env(info):
    return {
        "AWS_ENDPOINT_URL": info["endpoint"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": info["region"],
        "AWS_ACCESS_KEY_ID": info["access_key_id"], "AWS_SECRET_ACCESS_KEY": info["secret_access_key"],
    }


def test_s3_url_reads_as_local(small_cache, posthoc_bin, s3_server, downloads, monkeypatch):
    env = s3_env(s3_server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = f"s3://{BUCKET}/caches/small"
    run_cli(posthoc_bin, "cache", "copy", small_cache, url)
    remote = posthoc.open(url)
    assert pathlib.Path(remote.path).is_relative_to(downloads)
    assert_same_cache(remote, posthoc.open(small_cache))
    rows = posthoc.evaluate(url, method="msp", as_="records")
    assert {r["ood_set"] for r in rows} >= {"isun", "average"}

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("POSTHOC_CACHE_DIR", str(downloads.parent / "fresh"))
    with pytest.raises(posthoc.CacheError, match=f"opening cache {url}"):
        posthoc.open(url)
