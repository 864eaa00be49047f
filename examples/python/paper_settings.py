# %% [markdown]
# # The papers' 13 settings from Python
#
# Opens the default cache (`just setup && just precompute` writes it), runs the default
# config's `[[eval.run]]` sweep into a DataFrame, and plots FPR95 of the DICE sparsity
# sweep. Run as a script (`python examples/python/paper_settings.py [CACHE]`, from anywhere)
# or cell by cell from the repository root.

# %%
import sys
from pathlib import Path

import posthoc

# The repository root: two levels above this file, or the working directory in a notebook.
ROOT = Path(__file__).resolve().parents[2] if "__file__" in globals() else Path.cwd()
CONFIG = ROOT / "configs" / "cifar10-densenet100.toml"
OUT = ROOT / "out"
cache_dir = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else OUT / "cifar10-densenet100"
cache = posthoc.open(cache_dir)
print(cache)

# %%
df = posthoc.evaluate(cache, config=CONFIG)
average = df[df.ood_set == "average"]
wanted = ["method", "p", "clip", "temperature", "p_a", "p_w", "fpr95", "auroc", "id_accuracy"]
print(average[[c for c in wanted if c in average]].to_string())

# %%
sweep = posthoc.evaluate(cache, method="dice", p=list(range(0, 100, 10)))
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5, 3.5))
for name, part in sweep.groupby("ood_set"):
    ax.plot(part.p, 100 * part.fpr95, marker="o", label=name, lw=2 if name == "average" else 1)
ax.set(xlabel="DICE sparsity p (%)", ylabel="FPR95 (%)", title=cache.manifest["model"]["id"])
ax.legend(fontsize=7)
fig.tight_layout()
OUT.mkdir(exist_ok=True)
fig.savefig(OUT / "dice-sweep.png", dpi=150)
print(f"wrote {OUT / 'dice-sweep.png'}")
