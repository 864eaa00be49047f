"""Evaluating: `posthoc.evaluate` equals `posthoc eval --json` row for row."""

import json

import numpy as np
import pytest

import posthoc
from conftest import REPO, run_cli

CONFIG = REPO / "configs" / "cifar10-densenet100.toml"
METRICS = ["fpr95", "auroc", "aupr_in", "aupr_out", "id_accuracy"]


def cli_rows(posthoc_bin, tmp_path, *args):
    out = tmp_path / "rows.json"
    run_cli(posthoc_bin, "eval", "--json", out, *args)
    return json.loads(out.read_text())


def assert_same_rows(frame, rows):
    assert len(frame) == len(rows) > 0
    for got, want in zip(frame, rows):
        for key in ["method", "id_set", "ood_set", "n_id", "n_ood", "convention", *METRICS]:
            assert got[key] == want[key], (key, got, want)
        assert {k: got[k] for k in want["params"]} == want["params"]


def test_config_sweep_equals_the_cli(small_cache, posthoc_bin, tmp_path):
    for convention in ["sklearn", "dice"]:
        want = cli_rows(posthoc_bin, tmp_path, "--cache", small_cache, "--config", CONFIG,
                        "--convention", convention)
        got = posthoc.evaluate(small_cache, config=CONFIG, convention=convention, as_="records")
        assert_same_rows(got, want)
    methods = {r["method"] for r in want}
    assert {"msp", "energy", "react", "dice", "line", "himplos"} <= methods


def test_method_sweep_equals_the_cli_as_a_dataframe(small_cache, posthoc_bin, tmp_path):
    pd = pytest.importorskip("pandas")
    want = cli_rows(posthoc_bin, tmp_path, "--cache", small_cache, "--method", "dice,react",
                    "--p", "0,50,70,90", "--clip", "p90,1.5")
    cache = posthoc.open(small_cache)
    frame = posthoc.evaluate(cache, method=["dice", "react"], p=[0, 50, 70, 90], clip=["p90", 1.5])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:2]) == ["method", "p"]
    assert list(frame.columns[-7:]) == ["n_ood", *METRICS, "convention"]
    assert_same_rows(frame.to_dict("records"), want)


def test_scores_are_returned_per_setting(small_cache):
    cache = posthoc.open(small_cache)
    frame, scores = posthoc.evaluate(cache, method="energy", temperature=[1, 1000], scores=True)
    assert [s["params"]["temperature"] for s in scores] == [1.0, 1000.0]
    n_id = len(cache.labels("id_test"))
    for s in scores:
        assert s["method"] == "energy" and s["id"].shape == (n_id,)
        assert set(s["ood"]) == {"isun", "mnist", "tinyimagenet"}
    # energy at T = 1 is logsumexp of the cached logits (the logits are the head's output).
    z = cache.logits("id_test").astype(np.float64)
    want = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    np.testing.assert_allclose(scores[0]["id"], want, rtol=1e-5)


@pytest.mark.parametrize("kwargs, cli_args", [
    (dict(method="no-such-method"), ["--method", "no-such-method"]),
    (dict(method="dice", p=[50, 120]), ["--method", "dice", "--p", "50,120"]),
    (dict(method="energy", convention="roc"), ["--method", "energy", "--convention", "roc"]),
    (dict(method="energy", ood=["cifar100"]), ["--method", "energy", "--ood", "cifar100"]),
    (dict(p=[50]), ["--p", "50"]),
])
def test_bad_parameters_raise_value_error_with_the_cli_message(small_cache, posthoc_bin, kwargs, cli_args):
    out = run_cli(posthoc_bin, "eval", "--cache", small_cache, *cli_args, ok=False)
    assert out.returncode != 0
    cli_message = out.stderr.strip().splitlines()[-1].removeprefix("error: ")
    with pytest.raises(ValueError) as e:
        posthoc.evaluate(small_cache, **kwargs)
    assert str(e.value) == cli_message


def test_unknown_parameter_names_the_known_ones(small_cache):
    with pytest.raises(ValueError, match=r"unknown parameter `q` \(known: p, clip"):
        posthoc.evaluate(small_cache, method="dice", q=[1])
    with pytest.raises(ValueError, match="as_="):
        posthoc.evaluate(small_cache, method="msp", as_="excel")


def test_selection_equals_the_cli(small_cache, posthoc_bin, tmp_path):
    want = cli_rows(posthoc_bin, tmp_path, "--cache", small_cache, "--method", "dice,react",
                    "--p", "0,70,90", "--clip", "p90,1.0", "--select", "auroc", "--val-ood", "isun",
                    "--val-fraction", "0.25")
    got = posthoc.evaluate(small_cache, method=["dice", "react"], p=[0, 70, 90], clip=["p90", 1.0],
                           select="auroc", val_ood="isun", val_fraction=0.25, as_="records")
    assert_same_rows(got, want)
    assert [r["selected"] for r in got] == [r["selected"] for r in want]
    assert {r["ood_set"] for r in got} == {"mnist", "tinyimagenet", "average"}
    assert sum(r["selected"] for r in got) == 2 * 3  # one setting per method, 3 rows each
    with pytest.raises(ValueError, match="--select needs --val-ood"):
        posthoc.evaluate(small_cache, method="dice", select="auroc")
