"""Writes pipeline/tests/fixtures/backbones/<arch>.{features,logits}.npy: torchvision (PyTorch CPU, float32,
eval mode) features and logits of every ResNet and MobileNet-v2 of the architecture registry
on seeded formula weights, plus `mobilenet_v2.keys.txt` (torchvision's state-dict keys and
shapes), for the parity test `pipeline/tests/backbone_parity.rs`, which builds the
same weights (same formula, see `formula`) and runs our network.

No pretrained weights are needed: every parameter and BatchNorm statistic is a function of
its key and element index, computed in float64 with correctly rounded operations only
(integer hash, exact scaling, one sqrt) and rounded once to float32, so both sides get the
same bits. Inputs are a formula too.

    /work/.venv-torch/bin/python scripts/backbone_parity_fixture.py
"""

import pathlib

import numpy as np
import torch
import torchvision

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "pipeline" / "tests" / "fixtures" / "backbones"
NUM_CLASSES = 10
BATCH = 2


def key_seed(key: str) -> int:
    """h = (h * 31 + byte) mod 2^32 over the UTF-8 bytes of the key."""
    h = 0
    for b in key.encode():
        h = (h * 31 + b) % (1 << 32)
    return h


def uniform(key: str, n: int) -> np.ndarray:
    """u_i = mix((i * 2654435761 + seed * 40503 + 12345) mod 2^32) / 2^32, float64 in [0, 1),
    with the integer finaliser mix(h): h ^= h >> 15; h = h * 2246822519 mod 2^32; h ^= h >> 13.
    (Without the finaliser the values along a tensor are a Weyl sequence: nearly zero-sum
    filters, and MobileNet-v2's features came out the same for every input.)"""
    i = np.arange(n, dtype=np.uint64)
    seed = np.uint64(key_seed(key))
    m32 = np.uint64((1 << 32) - 1)
    with np.errstate(over="ignore"):
        h = (i * np.uint64(2654435761) + seed * np.uint64(40503) + np.uint64(12345)) & m32
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(2246822519)) & m32
        h ^= h >> np.uint64(13)
    return h.astype(np.float64) / float(1 << 32)


def formula(key: str, shape, gain: float = 1.0) -> np.ndarray:
    """The value of parameter / buffer `key` (PyTorch naming); convolution and linear weights
    have variance `gain / fan_in` (MobileNet-v2 uses gain 2, He's: with 1 its ReLU6 layers
    halve the signal until the features hardly depend on the input)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(key, n)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        v = (u - 0.5) * 0.25
    elif leaf == "running_var":
        v = u + 0.5
    elif len(shape) == 1 and leaf == "weight":  # BatchNorm gamma
        v = u * 0.5 + 0.5
    elif leaf == "bias":
        v = (u - 0.5) * 0.125
    else:  # conv / linear weight: uniform with variance gain / fan_in
        fan_in = int(np.prod(shape[1:]))
        v = (u - 0.5) * 2.0 * np.sqrt(3.0 * gain / fan_in)
    return v.astype(np.float32).reshape(shape)


def inputs(shape) -> np.ndarray:
    """x_i = (u_i - 0.5) * 4 with the key "input"."""
    return ((uniform("input", int(np.prod(shape))) - 0.5) * 4.0).astype(np.float32).reshape(shape)


def cifar_resnet18():
    """OpenOOD ResNet18_32x32 computed by torchvision's ResNet: a 3x3 stride-1 stem without
    max-pool (same BasicBlocks, same global average pool); its state-dict keys are
    torchvision's with `downsample` where OpenOOD writes `shortcut`."""
    net = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = torch.nn.Identity()
    return net


def resnet_features(net, x):
    """Flattened `avgpool` of `layer4`."""
    fmap = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    return torch.flatten(net.avgpool(fmap), 1), net.fc


def mobilenet_features(net, x):
    """Global average pool of `features` (torchvision's forward)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(net.features(x), (1, 1))
    return torch.flatten(pooled, 1), net.classifier


ARCHS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES), 64, {}),
    "resnet34": (lambda: torchvision.models.resnet34(num_classes=NUM_CLASSES), 64, {}),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=NUM_CLASSES), 64, {}),
    "resnet101": (lambda: torchvision.models.resnet101(num_classes=NUM_CLASSES), 64, {}),
    "resnet152": (lambda: torchvision.models.resnet152(num_classes=NUM_CLASSES), 64, {}),
    "wide_resnet50_2": (
        lambda: torchvision.models.wide_resnet50_2(num_classes=NUM_CLASSES),
        64,
        {},
    ),
    "resnet18-cifar": (cifar_resnet18, 32, {"downsample.": "shortcut."}),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES), 64, {}),
}

# Weight gain of `formula` per architecture (1 unless listed).
GAIN = {
    "mobilenet_v2": 2.0,
}


PARTIAL_PREFIXES = ("features.0.", "features.1.", "features.2.", "classifier.1.")


def write_partial_pth(sd):
    """`mobilenet_v2.partial.pth`: a real `torch.save` zip of the formula state dict's stem,
    first two blocks and classifier (num_batches_tracked included), saved like
    `torch.save({'model': DataParallel(net).state_dict()})`. A whole state dict is 9 MB of
    incompressible floats, too big to commit; this one lets the loading tests check
    torchvision's own key names on a torch-written file (nothing unexpected, the rest
    missing) and truncate it."""
    part = {f"module.{k}": t.clone() for k, t in sd.items() if k.startswith(PARTIAL_PREFIXES)}
    torch.save({"model": part, "epoch": 90}, OUT / "mobilenet_v2.partial.pth")


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "provenance.txt").write_text(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}; "
        f"scripts/backbone_parity_fixture.py, batch {BATCH}, {NUM_CLASSES} classes, "
        "inputs 64x64 (resnet18-cifar 32x32)\n"
    )
    for name, (build, size, renames) in ARCHS.items():
        net = build().eval()
        sd = net.state_dict()
        new = {}
        for key, t in sd.items():
            if key.endswith("num_batches_tracked"):
                new[key] = t
                continue
            file_key = key
            for a, b in renames.items():
                file_key = file_key.replace(a, b)
            # The formula is keyed by the checkpoint's (file) names.
            new[key] = torch.from_numpy(formula(file_key, tuple(t.shape), GAIN.get(name, 1.0)))
        net.load_state_dict(new)
        x = torch.from_numpy(inputs((BATCH, 3, size, size)))
        with torch.no_grad():
            head = mobilenet_features if name == "mobilenet_v2" else resnet_features
            features, classifier = head(net, x)
            logits = classifier(features)
            assert torch.equal(logits, net(x))
        if name == "mobilenet_v2":
            (OUT / f"{name}.keys.txt").write_text(
                "".join(
                    f"{k} {','.join(map(str, t.shape))}\n"
                    for k, t in sd.items()
                    if not k.endswith("num_batches_tracked")
                )
            )
            write_partial_pth(net.state_dict())
        np.save(OUT / f"{name}.features.npy", features.numpy())
        np.save(OUT / f"{name}.logits.npy", logits.numpy())
        print(f"{name}: {size}x{size}, features {tuple(features.shape)}, |f| max {features.abs().max():.3g}, |logit| max {logits.abs().max():.3g}")


if __name__ == "__main__":
    main()
