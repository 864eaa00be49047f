"""Shared fixtures: the posthoc-small fixture, the CLI binary, a cache imported by it."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "posthoc-small"
CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
MODEL_ID = "densenet-bc-100-cifar10-dice"


@pytest.fixture(scope="session")
def fixture_dir():
    """`../shared/fixtures/posthoc-small`, or a skip saying it is absent."""
    if not FIXTURE.is_dir():
        pytest.skip(f"skipping: {FIXTURE} not found")
    return FIXTURE


@pytest.fixture(scope="session")
def posthoc_bin():
    """The `posthoc` CLI binary `just python-test` built (env POSTHOC_BIN)."""
    path = os.environ.get("POSTHOC_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("POSTHOC_BIN must name the posthoc binary (`just python-test` sets it)")
    return path


def run_cli(posthoc_bin, *args, ok=True):
    """Runs the CLI; returns the finished process (checked for success when `ok`)."""
    out = subprocess.run([posthoc_bin, *map(str, args)], capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, f"posthoc {args} failed: {out.stderr}"
    return out


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory, fixture_dir, posthoc_bin):
    """The fixture imported by `posthoc cache import-npy` (as tests/eval_cli.rs does)."""
    out = tmp_path_factory.mktemp("small") / "cache"
    run_cli(
        posthoc_bin, "cache", "import-npy", "--from", fixture_dir, "--out", out,
        "--model-id", MODEL_ID, "--class-names", CLASSES,
    )
    return out
