"""Writes pipeline/tests/fixtures/pil_resize.json: Pillow's antialiased BILINEAR and BICUBIC
resizes of seeded formula images (full output bytes) and, for real ImageNet-style images of
../shared/data/imagenet, the sha256 of torchvision Resize(256, interpolation) + CenterCrop(224)
after convert('RGB') (no pixels of the shared data are stored).

Run with a Python that has Pillow and torchvision, e.g.
    /work/.venv-torch/bin/python scripts/pil_resize_fixture.py
"""

import hashlib
import json
import pathlib

import PIL
from PIL import Image
import torchvision.transforms as T

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "imagenet"
OUT = ROOT / "pipeline" / "tests" / "fixtures" / "pil_resize.json"


def formula_image(w, h):
    """RGB pixel (x, y, c) = (x * 31 + y * 17 + c * 101 + x * y * 7) % 256."""
    data = bytes(
        (x * 31 + y * 17 + c * 101 + x * y * 7) % 256
        for y in range(h)
        for x in range(w)
        for c in range(3)
    )
    return Image.frombytes("RGB", (w, h), data)


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
MODES = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}

def shorter_side(w, h, size):
    """torchvision Resize(size): the shorter side to size, the longer truncated."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


# Shorter-side resizes (what Resize(int) does), down and up. (Anisotropic resizes that
# upscale one axis and downscale the other are not covered: Pillow 13 then runs the
# vertical pass first by a rule not reproduced here.)
formula = []
for (w, h) in [(37, 23), (16, 16), (9, 5)]:
    src = formula_image(w, h)
    for (nw, nh) in [shorter_side(w, h, s) for s in (3, 7, 40, 64)]:
        for name, f in FILTERS.items():
            out = src.resize((nw, nh), f)
            formula.append(
                {
                    "width": w,
                    "height": h,
                    "new_width": nw,
                    "new_height": nh,
                    "filter": name,
                    "pixels_hex": out.tobytes().hex(),
                }
            )

# Two val images (227 x 227: upscaled), a train-sample image with an apostrophe in its
# name, and a greyscale ("L") texture.
files = [line.split()[0] for line in (SHARED / "val.txt").read_text().splitlines()[:2]]
train = sorted(p for p in (SHARED / "train-sample").rglob("*'*"))
files.append(str(train[0].relative_to(SHARED)))
files.append("ood/textures/banded/banded_0044.jpg")
assert Image.open(SHARED / files[-1]).mode == "L"

real = []
for rel in files:
    img = Image.open(SHARED / rel).convert("RGB")
    for name, mode in MODES.items():
        t = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224)])
        out = t(img)
        real.append(
            {
                "path": rel,
                "filter": name,
                "sha256": hashlib.sha256(out.tobytes()).hexdigest(),
            }
        )

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(
    json.dumps(
        {
            "pillow": PIL.__version__,
            "formula": formula,
            "imagenet": real,
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {OUT}: {len(formula)} formula resizes, {len(real)} real images")
