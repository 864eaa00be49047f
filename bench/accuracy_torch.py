#!/usr/bin/env python3
"""PyTorch's ID accuracy of the DICE CIFAR-10 DenseNet on `cifar10/test-lossless-first1000`
(canonical lossless test images; DICE test transform, no resize at 32x32), to compare with
`posthoc precompute` + `posthoc eval` on the same folder.

Usage (repository root, a venv with torch, numpy, pillow): python bench/accuracy_torch.py
"""
import sys, csv, numpy as np, torch
from PIL import Image
sys.path.insert(0, "bench")
from densenet_torch import DenseNetBC
torch.set_num_threads(2)
root = "../shared/data/cifar10/test-lossless-first1000"
rows = list(csv.DictReader(open(f"{root}/index.csv")))
state = torch.load("../shared/data/checkpoints/dice-densenet100/cifar10/checkpoint_100.pth.tar", map_location="cpu", weights_only=False)["state_dict"]
m = DenseNetBC().eval(); m.load_state_dict(state)
mean = np.array([0.4914, 0.4822, 0.4465], np.float32); std = np.array([0.2023, 0.1994, 0.2010], np.float32)
xs, ys = [], []
for r in rows:
    path = [v for k, v in r.items() if "path" in k][0]
    img = np.asarray(Image.open(f"{root}/{path}").convert("RGB"), dtype=np.uint8)
    x = ((img.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
    xs.append(x); ys.append(int([v for k, v in r.items() if "label" in k][0]))
with torch.inference_mode():
    _, logits = m(torch.from_numpy(np.stack(xs)))
pred = logits.argmax(1).numpy()
print("PyTorch accuracy on test-lossless-first1000:", (pred == np.array(ys)).mean(), len(ys))
