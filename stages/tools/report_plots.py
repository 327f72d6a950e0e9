"""Figures of `gpo report`: each function takes plain rows (what the printed SQL returns) and gives PNG bytes.

matplotlib is imported inside the functions and only through `Figure` + the Agg canvas, so importing this
module is free and no global backend is switched.
"""

from __future__ import annotations

import io
import math

BLUE, RED, GREY, GREEN = "#3566a8", "#c8382f", "#8a8f98", "#3a8a4f"
MODE_COLORS = {"greedy": "#3566a8", "sampled": "#e08a2c"}


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _style(ax, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e4e6ea", linewidth=0.8)
    ax.set_axisbelow(True)


def _integer_ticks(ax, axis: str = "x") -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def value_curves(trajectories: list[dict]) -> bytes:
    """Small multiples: V̂(s_0..s_n) with Wilson bands; the critical step's transition in red.

    Each trajectory: label, values (n+1, None where unknown), low/high (Wilson, None where no rollouts),
    filled (n+1 flags: value filled in without rollouts), critical (step index or None), reward.
    """
    ncols = min(4, len(trajectories))
    nrows = math.ceil(len(trajectories) / ncols)
    fig, axes = _figure(2.6 * ncols + 0.4, 2.1 * nrows + 0.3, ncols, nrows, sharey=True)
    for ax in axes.flat[len(trajectories):]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, trajectories):
        xs = list(range(len(t["values"])))
        vals = [math.nan if v is None else v for v in t["values"]]
        lo = [math.nan if v is None else v for v in t["low"]]
        hi = [math.nan if v is None else v for v in t["high"]]
        m = t["critical"]
        if m is not None:
            ax.axvspan(m, m + 1, color=RED, alpha=0.08, linewidth=0)
        ax.fill_between(xs, lo, hi, color=BLUE, alpha=0.18, linewidth=0, label="95% Wilson")
        ax.plot(xs[:-1], vals[:-1], "-o", color=BLUE, markersize=3.5, linewidth=1.4, label="V̂(s_i)")
        ax.plot(xs[-2:], vals[-2:], "--", color=BLUE, linewidth=1.0)
        filled = [i for i in xs[:-1] if t["filled"][i]]
        if filled:
            ax.plot(filled, [vals[i] for i in filled], "o", markersize=4.5, markerfacecolor="white",
                    markeredgecolor=BLUE, label="filled in (no rollouts)")
        ax.plot([xs[-1]], [vals[-1]], "s", color=GREEN if t["reward"] == 1 else GREY, markersize=5,
                label="reward (s_n)")
        if m is not None and m + 1 < len(vals):
            ax.plot([m, m + 1], [vals[m], vals[m + 1]], "-", color=RED, linewidth=2.6, label="critical step")
        if m is not None:
            ax.text(m + 0.5, 1.03, f"m={m}", ha="center", va="top", fontsize=7.5, color=RED)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(-0.3, xs[-1] + 0.3)
        _integer_ticks(ax)
        _style(ax, t["label"], "state i", "")
        ax.title.set_fontsize(8)
    axes.flat[0].set_ylabel("V̂(s_i)", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:len(trajectories)]:  # the first panel may lack a critical step
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    return _png(fig)


def critical_positions(relative: list[tuple[float, int]], absolute: list[tuple[int, int]]) -> bytes:
    fig, axes = _figure(10, 3.2, 2)
    ax = axes[0, 0]
    counts = dict(relative)
    bins = [i / 10 for i in range(10)]
    ax.bar(bins, [counts.get(b, 0) for b in bins], width=0.1, align="edge", color=BLUE, edgecolor="white")
    ax.set_xlim(0, 1)
    _integer_ticks(ax, "y")
    _style(ax, "relative position m / n", "critical step / number of steps", "trajectories")
    ax = axes[0, 1]
    ax.bar([s for s, _ in absolute], [c for _, c in absolute], width=0.8, color=BLUE)
    _integer_ticks(ax)
    _integer_ticks(ax, "y")
    _style(ax, "absolute position m", "critical step index", "trajectories")
    return _png(fig)


def advantages(bins: list[tuple[float, int, int]], width: float = 0.1) -> bytes:
    fig, axes = _figure(10, 3.2, 2)
    for ax, col, title, color in ((axes[0, 0], 1, "all steps", GREY), (axes[0, 1], 2, "critical steps", RED)):
        xs = [b[0] for b in bins if b[col]]
        ax.bar(xs, [b[col] for b in bins if b[col]], width=width, color=color, edgecolor="white")
        ax.axvline(0, color="#444", linewidth=0.8)
        ax.set_xlim(-1.08, 1.08)
        _integer_ticks(ax, "y")
        _style(ax, f"A_i = V̂(s_i+1) − V̂(s_i), {title}", "advantage", "steps")
    return _png(fig)


def agreement(cells: list[tuple[int, int | None, int]], rate: float | None) -> bytes:
    """Heatmap of (first wrong line, critical step) counts; a column 'none' for no critical step."""
    import numpy as np

    lines = sorted({c[0] for c in cells})
    steps = sorted({c[1] for c in cells if c[1] is not None})
    cols = steps + (["none"] if any(c[1] is None for c in cells) else [])
    grid = np.zeros((len(lines), len(cols)), dtype=int)
    for line, step, n in cells:
        grid[lines.index(line), cols.index("none" if step is None else step)] += n
    fig, axes = _figure(max(4.5, 0.55 * len(cols) + 2.5), max(3.0, 0.45 * len(lines) + 1.6))
    ax = axes[0, 0]
    ax.imshow(grid, cmap="Blues", aspect="auto", origin="lower")
    for i in range(len(lines)):
        for j in range(len(cols)):
            if grid[i, j]:
                dark = grid[i, j] > grid.max() / 2
                ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "#222")
                if cols[j] == lines[i]:
                    ax.add_patch(_square(j, i))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(lines)), [str(x) for x in lines])
    title = "critical step vs first wrong line" + (f" (agreement {rate:.0%})" if rate is not None else "")
    _style(ax, title, "critical step m", "first wrong line")
    ax.grid(False)
    return _png(fig)


def _square(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=GREEN, linewidth=1.6)


def _interval_bars(ax, names: list[str], series: dict[str, list[tuple[float, float, float] | None]]) -> None:
    """Grouped bars with asymmetric error bars; series: legend name -> per name (value, low, high)."""
    k = len(series)
    width = 0.8 / k
    for j, (key, vals) in enumerate(series.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(names))]
        pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
        ys = [v[0] for _, v in pts]
        err = [[max(0.0, v[0] - v[1]) for _, v in pts], [max(0.0, v[2] - v[0]) for _, v in pts]]  # float noise
        ax.bar([x for x, _ in pts], ys, width=width * 0.92, color=MODE_COLORS.get(key, BLUE), label=key,
               yerr=err, capsize=3, error_kw={"linewidth": 1, "ecolor": "#333"})
        for (x, v) in pts:
            ax.text(x, v[2] + 0.015, f"{v[0]:.1%}", ha="center", va="bottom", fontsize=7.5)
    ax.set_xticks(range(len(names)), names, rotation=20 if max(map(len, names)) > 12 else 0, ha="right"
                  if max(map(len, names)) > 12 else "center")
    ax.set_ylim(0, 1.22)  # room above a 100% bar for its label and the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlim(-0.6, len(names) - 0.4)


def eval_accuracy(rows: list[tuple[str, str, float, float, float]]) -> bytes:
    labels = list(dict.fromkeys(r[0] for r in rows))
    modes = [m for m in ("greedy", "sampled") if any(r[1] == m for r in rows)]
    modes += sorted({r[1] for r in rows} - set(modes))
    series = {m: [next(((r[2], r[3], r[4]) for r in rows if r[0] == lab and r[1] == m), None) for lab in labels]
              for m in modes}
    fig, axes = _figure(max(5.0, 1.3 * len(labels) * len(modes) + 2), 3.6)
    _interval_bars(axes[0, 0], labels, series)
    _style(axes[0, 0], "accuracy per model (95% interval over problems)", "", "accuracy")
    axes[0, 0].legend(fontsize=8, frameon=False, loc="upper right", ncols=len(modes))
    return _png(fig)


def sample_overview(accuracy: list[tuple[str, float, float, float]],
                    lengths: list[tuple[int, int, int, int]]) -> bytes:
    """accuracy: (source, acc, low, high); lengths: (tokens_from, width, correct, incorrect)."""
    fig, axes = _figure(10, 3.4, 2, gridspec_kw={"width_ratios": [1, 2]})
    _interval_bars(axes[0, 0], [a[0] for a in accuracy], {"sample": [a[1:] for a in accuracy]})
    _style(axes[0, 0], "sample accuracy per source", "", "accuracy")
    ax = axes[0, 1]
    xs = [b[0] for b in lengths]
    width = lengths[0][1] if lengths else 1
    ax.bar(xs, [b[2] for b in lengths], width=width, align="edge", color=GREEN, edgecolor="white", label="correct")
    ax.bar(xs, [b[3] for b in lengths], width=width, align="edge", bottom=[b[2] for b in lengths], color=GREY,
           edgecolor="white", label="incorrect")
    _integer_ticks(ax, "y")
    _style(ax, "response length", "response tokens", "samples")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def cost(stages: list[tuple[str, float, float, float]]) -> bytes:
    """stages: (stage, generated tokens, rollouts + branches, wall seconds)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    names = [s[0] for s in stages]
    fig, axes = _figure(10, 0.32 * len(stages) + 1.4, 3, sharey=True)
    for ax, col, title, color in ((axes[0, 0], 1, "generated tokens", BLUE),
                                  (axes[0, 1], 2, "rollouts + branches sampled", "#e08a2c"),
                                  (axes[0, 2], 3, "wall seconds (sum over shards)", GREY)):
        vals = [float(s[col] or 0) for s in stages]
        ax.barh(range(len(names)), vals, color=color, height=0.6)
        top = max(vals) if vals and max(vals) > 0 else 1
        for i, v in enumerate(vals):
            label = f"{v:,.0f}" if col < 3 or v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
            ax.text(v + top * 0.02, i, label, va="center", fontsize=7.5)
        ax.set_xlim(0, top * 1.3)
        ax.set_yticks(range(len(names)), names)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # tick labels of large counts must not collide
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
        _style(ax, title)
        ax.grid(axis="x", color="#e4e6ea", linewidth=0.8)
        ax.grid(axis="y", visible=False)
    axes[0, 0].invert_yaxis()  # shared: pipeline order from top to bottom
    return _png(fig)


def train_loss(series: dict[str, tuple[list[int], list[float]]]) -> bytes:
    fig, axes = _figure(10, 3.4)
    ax = axes[0, 0]
    for name, (steps, losses) in series.items():
        ax.plot(steps, losses, linewidth=1.4, label=name, marker="o" if len(steps) < 20 else None, markersize=3)
    _integer_ticks(ax)
    _style(ax, "training loss", "optimizer step", "loss")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)
