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


# --- BiT ResNet-v2 (google-research/big_transfer bit_pytorch/models.py, written out here) ---

BIT_UNITS = [1, 1, 1, 1]  # the reduced network of the test (R101x1 is [3, 4, 23, 3])
BIT_WIDTH = 1


class StdConv2d(torch.nn.Conv2d):
    """Weight-standardised convolution: (w - mean) / sqrt(var + 1e-10) per output channel."""

    def forward(self, x):
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (self.weight - m) / torch.sqrt(v + 1e-10)
        return torch.nn.functional.conv2d(x, w, None, self.stride, self.padding)


class PreActUnit(torch.nn.Module):
    """bit_pytorch PreActBottleneck: pre-activation, stride on the 3x3 convolution."""

    def __init__(self, cin, cout, cmid, stride):
        super().__init__()
        self.gn1 = torch.nn.GroupNorm(32, cin)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = torch.nn.GroupNorm(32, cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = torch.nn.GroupNorm(32, cmid)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = torch.relu(self.gn1(x))
        residual = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.gn2(out)))
        out = self.conv3(torch.relu(self.gn3(out)))
        return out + residual

    def load_from(self, w, prefix):
        conv = "standardized_conv2d/kernel"
        for i, sub in enumerate("abc", 1):
            getattr(self, f"conv{i}").weight.copy_(tf2th(w[f"{prefix}{sub}/{conv}"]))
            getattr(self, f"gn{i}").weight.copy_(tf2th(w[f"{prefix}{sub}/group_norm/gamma"]))
            getattr(self, f"gn{i}").bias.copy_(tf2th(w[f"{prefix}{sub}/group_norm/beta"]))
        if self.downsample is not None:
            self.downsample.weight.copy_(tf2th(w[f"{prefix}a/proj/{conv}"]))


def tf2th(a):
    """HWIO to OIHW (bit_pytorch's tf2th)."""
    return torch.from_numpy(a.transpose([3, 2, 0, 1]) if a.ndim == 4 else a)


class ResNetV2(torch.nn.Module):
    """bit_pytorch ResNetV2: root (StdConv 7x7/2, zero pad 1, max-pool 3/2), 4 blocks of
    PreActUnits, head (GroupNorm, ReLU, global average pool, 1x1 conv with bias)."""

    def __init__(self, units, wf, classes):
        super().__init__()
        self.root_conv = StdConv2d(3, 64 * wf, 7, stride=2, padding=3, bias=False)
        self.blocks = torch.nn.ModuleList()
        cin = 64 * wf
        for b, n in enumerate(units):
            cmid, cout = (64 << b) * wf, (256 << b) * wf
            stride = 1 if b == 0 else 2
            self.blocks.append(torch.nn.ModuleList(
                [PreActUnit(cin, cout, cmid, stride)] + [PreActUnit(cout, cout, cmid, 1) for _ in range(1, n)]
            ))
            cin = cout
        self.gn = torch.nn.GroupNorm(32, 2048 * wf)
        self.head_conv = torch.nn.Conv2d(2048 * wf, classes, 1, bias=True)

    def features(self, x):
        x = torch.nn.functional.max_pool2d(torch.nn.functional.pad(self.root_conv(x), (1, 1, 1, 1)), 3, 2)
        for block in self.blocks:
            for unit in block:
                x = unit(x)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.gn(x)), 1), 1)

    def logits(self, f):
        return self.head_conv(f[:, :, None, None])[:, :, 0, 0]

    def load_from(self, w, prefix="resnet/"):
        with torch.no_grad():
            self.root_conv.weight.copy_(tf2th(w[f"{prefix}root_block/standardized_conv2d/kernel"]))
            self.gn.weight.copy_(tf2th(w[f"{prefix}group_norm/gamma"]))
            self.gn.bias.copy_(tf2th(w[f"{prefix}group_norm/beta"]))
            self.head_conv.weight.copy_(tf2th(w[f"{prefix}head/conv2d/kernel"]))
            self.head_conv.bias.copy_(tf2th(w[f"{prefix}head/conv2d/bias"]))
            for b, block in enumerate(self.blocks, 1):
                for u, unit in enumerate(block, 1):
                    unit.load_from(w, f"{prefix}block{b}/unit{u:02d}/")


def bit_npz_shapes(net):
    """BiT's `.npz` names and TF (HWIO) shapes of every tensor of `net`."""
    shapes = {"resnet/root_block/standardized_conv2d/kernel": (7, 7, 3, net.root_conv.out_channels)}
    hwio = lambda c: tuple(c.weight.shape[i] for i in (2, 3, 1, 0))
    for b, block in enumerate(net.blocks, 1):
        for u, unit in enumerate(block, 1):
            p = f"resnet/block{b}/unit{u:02d}/"
            for i, sub in enumerate("abc", 1):
                shapes[f"{p}{sub}/standardized_conv2d/kernel"] = hwio(getattr(unit, f"conv{i}"))
                c = getattr(unit, f"gn{i}").num_channels
                shapes[f"{p}{sub}/group_norm/gamma"] = (c,)
                shapes[f"{p}{sub}/group_norm/beta"] = (c,)
            if unit.downsample is not None:
                shapes[f"{p}a/proj/standardized_conv2d/kernel"] = hwio(unit.downsample)
    c = net.gn.num_channels
    shapes["resnet/group_norm/gamma"] = (c,)
    shapes["resnet/group_norm/beta"] = (c,)
    shapes["resnet/head/conv2d/kernel"] = hwio(net.head_conv)
    shapes["resnet/head/conv2d/bias"] = (net.head_conv.out_channels,)
    return shapes


def bit_formula(key, shape):
    """`formula` for BiT's names: gamma / beta as BatchNorm weight / bias, a kernel (HWIO)
    uniform with variance 1 / fan_in, fan_in = kh * kw * in."""
    u = uniform(key, int(np.prod(shape)))
    leaf = key.rsplit("/", 1)[-1]
    if leaf == "gamma":
        v = u * 0.5 + 0.5
    elif leaf in ("beta", "bias"):
        v = (u - 0.5) * 0.125
    else:
        v = (u - 0.5) * 2.0 * np.sqrt(3.0 / int(np.prod(shape[:-1])))
    return v.astype(np.float32).reshape(shape)


# The arrays of the committed partial `.npz`: every name kind but the large kernels.
BIT_PARTIAL = ("resnet/root_block/", "resnet/group_norm/", "resnet/head/conv2d/bias", "resnet/block1/unit01/")


def write_bit():
    """resnetv2-14x1.{features,logits}.npy (the reduced network on formula weights loaded
    through BiT's load_from), resnetv2.partial.npz (np.savez, BiT's names) and
    resnetv2-101x1.keys.txt (the arrays bit_pytorch's load_from reads for R101x1)."""
    net = ResNetV2(BIT_UNITS, BIT_WIDTH, NUM_CLASSES).eval()
    weights = {k: bit_formula(k, s) for k, s in bit_npz_shapes(net).items()}
    net.load_from(weights)
    x = torch.from_numpy(inputs((BATCH, 3, 64, 64)))
    with torch.no_grad():
        features = net.features(x)
        logits = net.logits(features)
    np.save(OUT / "resnetv2-14x1.features.npy", features.numpy())
    np.save(OUT / "resnetv2-14x1.logits.npy", logits.numpy())
    partial = {
        k: v
        for k, v in weights.items()
        if k.startswith(BIT_PARTIAL) and not (k.endswith("kernel") and "unit01" in k)
    }
    np.savez(OUT / "resnetv2.partial.npz", **partial)
    # The full R101x1's arrays (BiT-S-R101x1.npz, 1000 classes): names and TF shapes.
    full = bit_npz_shapes(ResNetV2([3, 4, 23, 3], 1, 1000))
    (OUT / "resnetv2-101x1.keys.txt").write_text(
        "".join(f"{k} {','.join(map(str, v))}\n" for k, v in sorted(full.items()))
    )
    print(f"resnetv2-14x1: features {tuple(features.shape)}, rows differ by {(features[0] - features[1]).abs().max():.3g}, |logit| max {logits.abs().max():.3g}")


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "provenance.txt").write_text(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}; "
        f"scripts/backbone_parity_fixture.py, batch {BATCH}, {NUM_CLASSES} classes, "
        "inputs 64x64 (resnet18-cifar 32x32); BiT resnetv2-14x1 = units [1, 1, 1, 1], width 1\n"
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
    write_bit()


if __name__ == "__main__":
    main()
