"""table.md: our figures laid out like the paper's Table V, the paper's beside them."""

from __future__ import annotations

from ffint8.bench.paper import DISPLAY, PAPER, PAPER_ALGOS, PAPER_SETUP, canonical_model, paper_figures

# (aggregate key, title, PaperFigures field, unit)
METRICS = (
    ("accuracy", "Test accuracy (%)", "accuracy", "%"),
    ("train_seconds", "Training time (s)", "seconds", "s"),
    ("energy_j", "Training energy (J)", "joules", "J"),
    ("train_memory_mb", "Training memory (MB): peak RSS during training minus RSS before it",
     "memory_mb", "MB"),
)
BASELINES = ("bp-fp32", "bp-gdai8")


def _ours(agg: dict, key: str) -> float | None:
    v = agg.get(key)
    return None if v is None else (100 * v if key == "accuracy" else v)


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "n/a"
    if key == "accuracy":
        return f"{v:.2f}"
    return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def _cell(agg: dict | None, key: str, paper) -> str:
    ours = None if agg is None else _ours(agg, key)
    text = _fmt(ours, key)
    if key == "accuracy" and agg is not None and agg.get("accuracy_std") is not None:
        text += f" ± {100 * agg['accuracy_std']:.2f}"
    if paper is None:
        return text
    if ours is None:
        return f"{text} (paper {paper:g})"
    if key == "accuracy":
        return f"{text} (paper {paper:g}; {ours - paper:+.2f} pts)"
    return f"{text} (paper {paper:g}; {100 * (ours - paper) / paper:+.1f}%)"


def _ordered_algos(algos: list[str]) -> list[str]:
    return [a for a in PAPER_ALGOS if a in algos] + [a for a in algos if a not in PAPER_ALGOS]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ratio_text(ours: float | None, paper: float | None, points: bool = False) -> str:
    def f(v):
        return "n/a" if v is None else (f"{v:+.2f} pts" if points else f"{v:.2f}x")

    return f"{f(ours)} (paper {f(paper)})" if paper is not None else f(ours)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _name(model: str) -> str:
    return DISPLAY.get(canonical_model(model), model)


def _headline(model: str, dataset: str, agg: dict) -> list[str]:
    """FF-INT8 against each baseline present: ratios of time, energy, memory; accuracy gap."""
    ff = agg.get((model, dataset, "ff-int8"))
    if ff is None:
        return []
    lines = []
    for base in [b for b in BASELINES if (model, dataset, b) in agg]:
        bl = agg[(model, dataset, base)]
        pf, pb = paper_figures(model, "ff-int8", dataset), paper_figures(model, base, dataset)
        cols = []
        for key, field in (("seconds_per_epoch", "seconds"), ("energy_j", "joules"),
                           ("train_memory_mb", "memory_mb")):
            paper = _ratio(getattr(pf, field), getattr(pb, field)) if pf and pb else None
            cols.append(_ratio_text(_ratio(ff[key], bl[key]), paper))
        gap = None
        if ff["accuracy"] is not None and bl["accuracy"] is not None:
            gap = 100 * (ff["accuracy"] - bl["accuracy"])
        cols.append(_ratio_text(gap, pf.accuracy - pb.accuracy if pf and pb else None, points=True))
        lines.append(_row(_name(model), base.upper(), *cols))
    return lines


def make_table(rows: list[dict], agg: dict, settings: dict) -> str:
    """The markdown of table.md."""
    keys = sorted({(r["model"], r["dataset"]) for r in rows})
    algos = _ordered_algos(list(dict.fromkeys(r["algo"] for r in rows)))
    sources = sorted({a["energy_source"] for a in agg.values() if a.get("energy_source")})
    out = [
        "# Training figures beside the paper's Table V", "",
        f"Ours: {settings.get('dataset')}, {settings.get('epochs')} epochs, seeds "
        f"{settings.get('seeds')}, {settings.get('threads')} threads on {settings.get('machine')}; "
        f"energy: {', '.join(sources) or 'not recorded'}. Mean over seeds (± std)."
        + "".join(f" {label} `{' '.join(settings[key])}`." for key, label in
                  (("extra", "Flags of every cell:"), ("bp_extra", "Backprop cells also:"))
                  if settings.get(key))
        + (f" Every cell ran with MALLOC_MMAP_THRESHOLD_={settings['mmap_threshold']} (steady "
           "memory figures; times slowed where an algorithm allocates much)."
           if settings.get("mmap_threshold") else ""),
        f"Paper: {PAPER}; {PAPER_SETUP}. Absolute times and energies come from different hardware "
        "(and the paper's MLP runs on MNIST): compare the ratios in the last table. 'estimate:' "
        "energies are models, not measurements (docs/measurement.md).", "",
    ]
    for key, title, field, _ in METRICS:
        out += [f"## {title}", "", _row("model", "dataset", *(a.upper() for a in algos)),
                "|---|---|" + "---|" * len(algos)]
        for model, dataset in keys:
            cells = []
            for a in algos:
                pf = paper_figures(model, a, dataset)
                cells.append(_cell(agg.get((model, dataset, a)), key, getattr(pf, field) if pf else None))
            out.append(_row(_name(model), dataset, *cells))
        out.append("")
    out += ["## Peak RSS (MB), arithmetic energy (J, relative only: Horowitz 45 nm)", "",
            "file-backed: the part of the training memory that is file-backed pages first touched "
            "in the loop, mostly library code run for the first time (shared, not data).", "",
            _row("model", "dataset", "algo", "peak RSS", "training memory: file-backed",
                 "arithmetic energy", "seconds per epoch"),
            "|---|---|---|---|---|---|---|"]
    for model, dataset in keys:
        for a in algos:
            g = agg.get((model, dataset, a))
            if g:
                out.append(_row(model, dataset, a, _fmt(g["peak_rss_mb"], "m"),
                                _fmt(g.get("train_file_mb"), "m"),
                                _fmt(g["arith_energy_j"], "e"), _fmt(g["seconds_per_epoch"], "s")))
    out += ["", "## FF-INT8 / baseline (ours, paper in brackets)", "",
            _row("model", "baseline", "time per epoch", "energy", "training memory", "accuracy"),
            "|---|---|---|---|---|---|"]
    lines = [line for model, dataset in keys for line in _headline(model, dataset, agg)]
    out += lines or [_row("(needs ff-int8 and bp-fp32 or bp-gdai8 in the matrix)", "", "", "", "", "")]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out += ["", "## Cells without results", ""]
        for r in failed:
            why = f": {r['error'].strip().splitlines()[-1][:300]}" if r["error"] else ""
            out.append(f"- {r['cell']}: {r['status']}{why}")
    return "\n".join(out) + "\n"
