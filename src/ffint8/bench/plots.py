"""PNG plots of a bench: test accuracy per epoch, and bars of time, energy and memory.

matplotlib is optional (pip install 'ffint8[plots]'): without it the plots are skipped with a
message and the rest of the bench is unaffected.
"""

from __future__ import annotations

from pathlib import Path

BARS = (("seconds_per_epoch", "training time per epoch (s)"),
        ("energy_j", "training energy (J)"),
        ("train_memory_mb", "training memory (MB)"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def write_plots(agg: dict, out: Path) -> tuple[list[Path], str | None]:
    """accuracy.png and bars.png under out. Returns (files written, why skipped or None)."""
    plt = _pyplot()
    if plt is None:
        return [], "plots skipped: matplotlib is not installed (pip install 'ffint8[plots]')"
    if not agg:
        return [], "plots skipped: no cell has finished"
    out = Path(out)
    groups = sorted({(m, d) for m, d, _ in agg})
    algos = list(dict.fromkeys(a for _, _, a in agg))
    files = []

    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], groups):
        for i, algo in enumerate(algos):
            curve = (agg.get((model, dataset, algo)) or {}).get("accuracy_per_epoch") or []
            points = [(e, 100 * v) for e, v in enumerate(curve, 1) if v is not None]  # --eval-every
            if points:
                ax.plot(*zip(*points), marker="o", label=algo, color=f"C{i}")
        ax.set(title=f"{model} on {dataset}", xlabel="epoch", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    files.append(out / "accuracy.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(BARS), figsize=(5 * len(BARS), 4), squeeze=False)
    width = 0.8 / max(len(algos), 1)
    for ax, (key, label) in zip(axes[0], BARS):
        missing = []
        for i, algo in enumerate(algos):
            xs, ys = [], []
            for g, group in enumerate(groups):
                v = (agg.get((*group, algo)) or {}).get(key)
                if v is None:
                    missing.append(algo)
                else:
                    xs.append(g + (i - (len(algos) - 1) / 2) * width)
                    ys.append(v)
            if xs:
                ax.bar(xs, ys, width, label=algo, color=f"C{i}")  # one colour per algo everywhere
        ax.set_xticks(range(len(groups)), [f"{m}\n{d}" for m, d in groups])
        ax.set(ylabel=label)
        if len(missing) == len(algos) * len(groups):  # say so rather than draw zeros
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue
        if missing:
            ax.set_title("n/a: " + ", ".join(sorted(set(missing))), fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "bars.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files, None
