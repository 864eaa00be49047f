"""`posthoc.torch.extract` on a small seeded torch model (`just python-test-torch`).

Skipped where torch is not importable (the lean `.venv-python` of `just python-test`).
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="skipping the posthoc.torch tests: torch is not installed (run `just python-test-torch`)"
)

import posthoc  # noqa: E402
import posthoc.torch as ptorch  # noqa: E402

M, C = 16, 10


class TinyNet(torch.nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pool -> Linear(16, 10)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, M, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(M, C)

    def forward(self, x):
        return self.fc(self.features(x))


def loader(x, y=None, batch=32):
    """A non-shuffled DataLoader of `(x, y)` (or `(x,)`) batches; the last one partial."""
    tensors = (x,) if y is None else (x, y)
    ds = torch.utils.data.TensorDataset(*tensors)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyNet()
    g = torch.Generator().manual_seed(1)
    data = {
        "id_train": (torch.randn(200, 3, 16, 16, generator=g), torch.randint(0, C, (200,), generator=g)),
        "id_test": (torch.randn(100, 3, 16, 16, generator=g), torch.randint(0, C, (100,), generator=g)),
        "ood/uniform": (torch.rand(70, 3, 16, 16, generator=g) * 4 - 2, None),
        "ood/shifted": (torch.randn(50, 3, 16, 16, generator=g) + 1.5,
                        torch.randint(0, 5, (50,), generator=g)),
    }
    return model, data


def test_extract_equals_a_manual_forward_and_evaluates(setup, tmp_path):
    model, data = setup
    model.train()
    loaders = {k: loader(x, y) for k, (x, y) in data.items()}
    cache = ptorch.extract(model, loaders, tmp_path / "cache", head=model.fc,
                           model_id="tiny-net", progress=False)

    assert model.training, "extract restores the training mode"
    assert not model.fc._forward_hooks, "extract removes its hook"
    assert cache.sets == {"id_train": "id_train", "id_test": "id_test",
                          "uniform": "ood", "shifted": "ood"}
    w, b = cache.head
    np.testing.assert_array_equal(w, model.fc.weight.detach().numpy())
    np.testing.assert_array_equal(b, model.fc.bias.detach().numpy())
    assert cache.manifest["model"]["id"] == "tiny-net"

    model.eval()
    with torch.no_grad():
        for key, (x, y) in data.items():
            name = key.removeprefix("ood/")
            h = torch.cat([model.features(xb) for (xb, *_) in loader(x)]).numpy()
            z = torch.cat([model(xb) for (xb, *_) in loader(x)]).numpy()
            np.testing.assert_array_equal(cache.features(name), h, err_msg=name)
            np.testing.assert_array_equal(cache.logits(name), z, err_msg=name)
            want = np.full(len(x), -1) if key.startswith("ood/") else y.numpy()
            np.testing.assert_array_equal(cache.labels(name), want, err_msg=name)
            np.testing.assert_array_equal(cache.index(name), np.arange(len(x)))
    assert cache.stats["n_train"] == 200

    rows = posthoc.evaluate(cache, method=["energy", "dice"], p=[0, 50], as_="records")
    assert {(r["method"], r["ood_set"]) for r in rows} == {
        (m, s) for m in ["energy", "dice"] for s in ["uniform", "shifted", "average"]
    }
    assert len(rows) == 9  # energy x 3 + dice x {0, 50} x 3
    z = cache.logits("id_test")
    accuracy = float((z.argmax(1) == data["id_test"][1].numpy()).mean())
    for r in rows:
        assert r["n_id"] == 100
        assert 0.0 <= r["auroc"] <= 1.0
        assert r["id_accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_default_head_class_names_and_unlabelled_ood(setup, tmp_path):
    model, data = setup

    class Named(torch.utils.data.TensorDataset):
        classes = [f"class{k}" for k in range(C)]

    (xt, yt), (xs, ys) = data["id_train"], data["id_test"]
    loaders = {
        "id_train": torch.utils.data.DataLoader(Named(xt, yt), batch_size=64),
        "id_test": loader(xs, ys, batch=100),
        "ood/plain": [data["ood/uniform"][0][:40], data["ood/uniform"][0][40:]],
    }
    cache = ptorch.extract(model, loaders, tmp_path / "cache", progress=True)
    assert cache.manifest["model"]["class_names"] == Named.classes
    np.testing.assert_array_equal(cache.head[0], model.fc.weight.detach().numpy())
    assert len(cache.features("plain")) == 70


def test_bad_input_is_a_value_error(setup, tmp_path):
    model, data = setup
    x, y = data["id_train"]
    with pytest.raises(ValueError, match="loaders key 'ood_x'"):
        ptorch.extract(model, {"ood_x": loader(x)}, tmp_path / "a")
    with pytest.raises(ValueError, match="labels are required for id_train"):
        ptorch.extract(model, {"id_train": loader(x)}, tmp_path / "b")
    with pytest.raises(ValueError, match="head: expected a torch.nn.Linear"):
        ptorch.extract(model, {"id_train": loader(x, y)}, tmp_path / "c", head=model.features)
    with pytest.raises(ValueError, match="yielded no batches"):
        ptorch.extract(model, {"id_train": []}, tmp_path / "d")
    assert not model.fc._forward_hooks


def test_image_folder_paths_and_class_names(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets", reason="skipping: torchvision is not installed")
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, n in [("train", 6), ("test", 4)]:
        for cls in ["cat", "dog"]:
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    tf = transforms.ToTensor()
    train = datasets.ImageFolder(tmp_path / "train", transform=tf)
    test = datasets.ImageFolder(tmp_path / "test", transform=tf)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    dl = torch.utils.data.DataLoader
    cache = ptorch.extract(model, {"id_train": dl(train, batch_size=5), "id_test": dl(test, batch_size=3),
                                   "ood/shuffled": dl(test, batch_size=3, shuffle=True)},
                           tmp_path / "cache", progress=False)
    assert cache.manifest["model"]["class_names"] == ["cat", "dog"]
    assert cache.split("id_train")["paths"] == [p for p, _ in train.samples]
    assert cache.split("id_test")["paths"] == [p for p, _ in test.samples]
    np.testing.assert_array_equal(cache.labels("id_test"), [y for _, y in test.samples])
    assert cache.split("shuffled")["paths"] == [str(i) for i in range(8)]  # shuffled: no paths
