"""The ``mirage demo`` HTML report: plots (PNG, matplotlib) and one self-contained HTML page.

``make_figures(out_dir, result, frames)`` draws the figures into ``<out_dir>/report_assets/`` and
returns their paths relative to ``out_dir``; ``write_report(out_dir, result, figures)`` writes
``<out_dir>/report.html`` atomically (temp file + rename). The page has inline CSS and a few lines of
inline JavaScript (play the videos in sync) and nothing fetched from the network; videos and
figures are referenced by relative paths, so the page works from the output directory as it is
(and from the MLflow artifacts, which keep the same layout).

``result`` is the dict ``jobs.demo.run_demo`` returns (see its docstring); every section of the
report tolerates missing parts, so a partial result still renders.

matplotlib comes with ``mlflow`` (a declared dependency); without it the report keeps its tables
and says that the plots were skipped.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mirage_model.io.atomic import atomic_path, atomic_write_text

ASSETS = "report_assets"
REPORT_NAME = "report.html"
MODE_LABELS = {"latent": "latent memory (Mirage)", "rgb": "RGB point cache", "none": "no memory"}
MODE_COLORS = {"latent": "#1f77b4", "rgb": "#d62728", "none": "#7f7f7f", "reference": "#2ca02c"}
READOUT_PREFIX = "readout:"
"""``make_figures``' videos under ``readout:<mode>`` are what that mode's memory showed each frame."""


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def plot_losses(path: Path, loss: Sequence[Sequence[float]], val_loss: Sequence[Sequence[float]],
                stage_bounds: Sequence[tuple[str, int, int]]) -> None:
    """Training loss per step (raw + moving average) and validation loss; stages shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.0))
    shades = ["#eef3fb", "#fbf1ea"]
    for i, (name, lo, hi) in enumerate(stage_bounds):
        ax.axvspan(lo, hi, color=shades[i % 2], zorder=0)
        ax.text((lo + hi) / 2, 1.0, f"stage {i + 1}: {name}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="#555")
        if i:
            ax.axvline(lo, color="#999", ls="--", lw=0.8)
    if loss:
        steps, values = np.array([s for s, _ in loss]), np.array([v for _, v in loss])
        ax.plot(steps, values, color="#9ab", lw=0.7, label="train loss (per step)")
        k = max(1, min(25, len(values) // 10))
        if k > 1:
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, color="#1f4e79", lw=1.6, label=f"train loss ({k}-step mean)")
    if val_loss:
        ax.plot([s for s, _ in val_loss], [v for _, v in val_loss], "o-", color="#d95f02", ms=3.5, lw=1.4,
                label="validation loss (fixed batch)")
    ax.set_xlabel("optimizer step (both stages)")
    ax.set_ylabel("flow-matching loss")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_trajectory(path: Path, centers: np.ndarray, forward: np.ndarray, chunk_starts: Sequence[int],
                    chunk_frames: int, pairs: Sequence[Sequence[int]] = ()) -> None:
    """Top view (x-z) of the camera centres with viewing directions, and the yaw per frame."""
    plt = _pyplot()
    from matplotlib import cm, colors

    c = np.asarray(centers, dtype=float)
    f = np.asarray(forward, dtype=float)
    n = len(c)
    half = (n - 1) // 2
    fig = plt.figure(figsize=(8.4, 6.6))
    ax = fig.add_axes((0.09, 0.57, 0.78, 0.37))
    ax2 = fig.add_axes((0.09, 0.08, 0.78, 0.38))
    cax = fig.add_axes((0.90, 0.08, 0.018, 0.86))
    norm = colors.Normalize(0, n - 1)
    cmap = cm.viridis
    extent = max(float(np.ptp(c[:, 0])), float(np.ptp(c[:, 2])), 0.2)
    arrow = 0.3 * extent
    gap = 0.45 * arrow  # the return leg is drawn this far behind the outgoing one (same poses)
    step = max(1, half // 6)
    legs = ((np.arange(0, half + 1), 0.0, "-", f"out: frames 0-{half}"),
            (np.arange(half, n), -gap, "--", f"back: frames {half}-{n - 1} (drawn {gap * 100:.0f} cm lower)"))
    for idx, dz, style, label in legs:
        p = c[idx] + np.array([0.0, 0.0, dz])
        ax.plot(p[:, 0], p[:, 2], style, color="#444", lw=1.0, label=label, zorder=1)
        picks = sorted(set(idx[::step].tolist()) | {int(idx[-1])})
        for i in picks:
            q = c[i] + np.array([0.0, 0.0, dz])
            ax.annotate("", xy=(q[0] + arrow * f[i, 0], q[2] + arrow * f[i, 2]), xytext=(q[0], q[2]),
                        arrowprops=dict(arrowstyle="-|>", color=cmap(norm(i)), lw=1.4, shrinkA=0, shrinkB=0,
                                        mutation_scale=9), zorder=2)
        ax.scatter(p[:, 0], p[:, 2], c=idx, cmap=cmap, norm=norm, s=10, zorder=3)
    ax.scatter([c[0, 0]], [c[0, 2]], marker="*", s=140, color="black", zorder=4, label=f"start = end (frame 0 = {n - 1:d})")
    tips = np.concatenate([c[:, [0, 2]], c[:, [0, 2]] + arrow * f[:, [0, 2]], c[:, [0, 2]] - [0.0, gap]])
    lo, hi = tips.min(0), tips.max(0)
    pad = 0.12 * max(float((hi - lo).max()), 0.1)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - 2.2 * pad, hi[1] + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x (m, right)")
    ax.set_ylabel("z (m, forward)")
    ax.set_title("top view of the camera path: centres, arrows = viewing direction (colour = frame)")
    ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9, ncol=1)
    ax.grid(alpha=0.25)

    yaw = np.degrees(np.arctan2(f[:, 0], f[:, 2]))
    frames = np.arange(n)
    for k, s in enumerate(chunk_starts):
        e = min(s + chunk_frames - 1, n - 1)
        ax2.axvspan(s, e, color=["#eef3fb", "#fbf1ea"][k % 2], zorder=0)
        ax2.text((s + e) / 2, 0.98, f"chunk {k}\nframes {s}-{e}", ha="center", va="top",
                 transform=ax2.get_xaxis_transform(), fontsize=7.5, color="#555")
    ax2.plot(frames, yaw, color="#444", lw=0.8, zorder=2)
    sc = ax2.scatter(frames, yaw, c=frames, cmap=cmap, norm=norm, s=12, zorder=3)
    inner = [(i, j) for i, j in pairs if i >= max(2, half // 6)]  # the widest arcs would leave the axes
    shown = inner[:: max(1, len(inner) // 5)]
    for i, j in shown:
        ax2.annotate("", xy=(j, yaw[j]), xytext=(i, yaw[i]),
                     arrowprops=dict(arrowstyle="<->", color="#888", lw=0.8,
                                     connectionstyle=f"arc3,rad={min(0.35, 0.12 * n / max(j - i, 1)):.3f}"))
    ax2.set_ylim(min(yaw.min(), 0) - 0.1 * max(np.ptp(yaw), 1), max(yaw.max(), 0) + 0.35 * max(np.ptp(yaw), 1))
    ax2.set_xlabel("frame")
    ax2.set_ylabel("yaw (degrees, + = right)")
    ax2.set_title(f"yaw per frame; grey arcs: revisit pairs ({len(pairs)} in all)")
    ax2.grid(alpha=0.25)
    fig.colorbar(sc, cax=cax).set_label("frame")
    _save(fig, path)
    plt.close(fig)


def plot_memory(path: Path, chunks: dict[str, list[dict]]) -> None:
    """Cache points and KiB per chunk, latent vs rgb (log scale)."""
    plt = _pyplot()
    modes = [m for m in ("latent", "rgb") if chunks.get(m)]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 2.9))
    width = 0.38
    for ax, key, unit, bottom in ((axes[0], "cache_points", "points", 1.0), (axes[1], "cache_bytes", "KiB", 0.1)):
        for k, m in enumerate(modes):
            xs = np.arange(len(chunks[m])) + (k - (len(modes) - 1) / 2) * width
            vals = np.array([s[key] for s in chunks[m]], dtype=float) / (1024.0 if unit == "KiB" else 1.0)
            bars = ax.bar(xs, np.maximum(vals, bottom), width, color=MODE_COLORS[m], label=MODE_LABELS[m])
            for b, v in zip(bars, vals):
                text = f"{v:,.0f}" if unit == "points" else _compact(v)
                ax.text(b.get_x() + b.get_width() / 2, max(v, bottom) * 1.15, text, ha="center",
                        va="bottom", fontsize=7.5)
        n = max((len(chunks[m]) for m in modes), default=0)
        ax.set_xticks(range(n), [f"after chunk {i}" for i in range(n)])
        ax.set_yscale("log")
        ax.set_ylim(bottom, ax.get_ylim()[1] * 5)
        ax.set_ylabel(f"cache size ({unit}, log scale)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("points in the memory")
    axes[1].set_title("memory footprint")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=8.5,
               frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_filmstrip(path: Path, videos: dict[str, np.ndarray], columns: Sequence[int], yaw: Sequence[float]) -> None:
    """Rows: the videos (reference render + each memory mode); columns: frames out and back."""
    plt = _pyplot()
    rows = list(videos)
    n = len(next(iter(videos.values())))
    h, w = next(iter(videos.values())).shape[1:3]
    half = (n - 1) // 2
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(1.25 * len(columns) * w / h * 0.8 + 1.2, 1.0 * len(rows) + 0.6))
    for r, name in enumerate(rows):
        for k, fi in enumerate(columns):
            ax = axes[r][k]
            ax.imshow(videos[name][fi], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_color("#1b7837" if fi < half else ("#762a83" if fi > half else "#000"))
                s.set_linewidth(1.5)
            if r == 0:
                leg = "out" if fi < half else ("turn" if fi == half else "back")
                ax.set_title(f"frame {fi}\n{leg}, yaw {yaw[fi]:.0f}°", fontsize=7)
            if k == 0:
                ax.set_ylabel(MODE_LABELS.get(name, name).replace(" (", "\n("), fontsize=7, rotation=0,
                              ha="right", va="center")
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    _save(fig, path)
    plt.close(fig)


def plot_psnr(path: Path, per_frame: dict[str, Sequence[float]], turn: int, chunk_starts: Sequence[int]) -> None:
    """PSNR against the ground truth at every frame, one line per memory mode; the way back shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 2.9))
    n = max(len(v) for v in per_frame.values())
    ax.axvspan(turn, n - 1, color="#762a83", alpha=0.07, lw=0)
    for s in list(chunk_starts)[1:]:
        ax.axvline(s, color="#999", lw=0.6, ls=":")
    for m, v in per_frame.items():
        y = np.array(v, dtype=float)
        y[0] = np.nan  # frame 0 is the given image
        ax.plot(np.arange(len(y)), y, color=MODE_COLORS.get(m, "#999"), lw=1.3, label=MODE_LABELS.get(m, m))
    ax.text(turn + 1, 0.98, "way back", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="#762a83")
    ax.set_xlabel("frame (dotted: chunk starts)")
    ax.set_ylabel("PSNR vs ground truth (dB)")
    ax.set_xlim(0, n - 1)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=8.5,
               frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _compact(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"


def filmstrip_columns(n: int) -> list[int]:
    """Frames mirrored about the turning point: 0, n/6, n/3, turn, then their revisits."""
    half = (n - 1) // 2
    out = sorted({0, half // 3, (2 * half) // 3, half})
    return out + [n - 1 - i for i in reversed(out[:-1])]


def make_figures(out_dir: str | os.PathLike, result: dict[str, Any],
                 videos: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """Draw the report's figures; returns {name: path relative to ``out_dir``} (empty without matplotlib)."""
    if _pyplot() is None:
        return {}
    out = Path(out_dir)
    assets = out / ASSETS
    figs: dict[str, str] = {}
    train = result.get("train") or {}
    if train.get("loss"):
        plot_losses(assets / "loss.png", train["loss"], train.get("val_loss", []), train.get("stage_bounds", []))
        figs["loss"] = f"{ASSETS}/loss.png"
    gen = result.get("generate") or {}
    traj = gen.get("trajectory") or {}
    if traj.get("centers"):
        pairs = gen.get("revisit_pairs", [])
        plot_trajectory(assets / "trajectory.png", np.array(traj["centers"]), np.array(traj["forward"]),
                        gen.get("chunk_starts", [0]), gen.get("chunk_frames", 33), pairs)
        figs["trajectory"] = f"{ASSETS}/trajectory.png"
    chunks = {m: v.get("chunks", []) for m, v in (gen.get("modes") or {}).items()}
    if chunks.get("latent") or chunks.get("rgb"):
        plot_memory(assets / "memory.png", chunks)
        figs["memory"] = f"{ASSETS}/memory.png"
    per_frame = {m: v["psnr_gt_per_frame"] for m, v in (gen.get("modes") or {}).items() if v.get("psnr_gt_per_frame")}
    if per_frame:
        n = max(len(v) for v in per_frame.values())
        plot_psnr(assets / "psnr.png", per_frame, (n - 1) // 2, gen.get("chunk_starts", [0]))
        figs["psnr"] = f"{ASSETS}/psnr.png"
    shown = {k[len(READOUT_PREFIX):]: v for k, v in (videos or {}).items() if k.startswith(READOUT_PREFIX)}
    videos = {k: v for k, v in (videos or {}).items() if not k.startswith(READOUT_PREFIX)}
    if videos:
        n = len(next(iter(videos.values())))
        fwd = np.array(traj.get("forward") or [[0, 0, 1]] * n)
        yaw = np.degrees(np.arctan2(fwd[:, 0], fwd[:, 2]))
        plot_filmstrip(assets / "frames.png", videos, filmstrip_columns(n), yaw)
        figs["frames"] = f"{ASSETS}/frames.png"
        for mode, frames in shown.items():
            rows = {"ground truth": videos.get("reference"), "memory readout": frames, "generated": videos.get(mode)}
            plot_filmstrip(assets / f"readout_{mode}.png", {k: v for k, v in rows.items() if v is not None},
                           filmstrip_columns(n), yaw)
            figs[f"readout_{mode}"] = f"{ASSETS}/readout_{mode}.png"
    return figs


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
CSS = """
:root { --fg:#1d232a; --muted:#5b6570; --line:#dde2e7; --bg:#f6f8fa; --acc:#1f4e79; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 34px 0 8px; padding-top: 10px; border-top: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 140px; }
.card .v { font-size: 20px; font-weight: 600; color: var(--acc); }
.card .k { font-size: 12px; color: var(--muted); }
table { border-collapse: collapse; margin: 8px 0 4px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
td.n, th.n { text-align: right; padding-right: 14px; }
tr.total td { font-weight: 600; border-top: 2px solid var(--fg); }
.bar { display: inline-block; height: 10px; background: var(--acc); opacity: .55; border-radius: 2px; vertical-align: middle; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 10px 0; }
.ok { color: #1b7837; } .bad { color: #b2182b; }
figure { margin: 10px 0; }
figure img { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
.videos { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 14px; margin: 10px 0; }
.videos figure { margin: 0; }
.videos video { width: 100%; background: #000; border-radius: 4px; image-rendering: pixelated; }
.videos .lab { font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
code, pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 8px 12px; border-radius: 6px; overflow-x: auto; }
button { font: inherit; padding: 4px 12px; border: 1px solid var(--acc); background: #fff; color: var(--acc);
         border-radius: 5px; cursor: pointer; }
button:hover { background: var(--acc); color: #fff; }
nav { font-size: 13px; color: var(--muted); margin: 8px 0 0; }
nav a { margin-right: 12px; }
a { color: var(--acc); }
details { margin: 8px 0; }
"""

SCRIPT = """
function playAll(restart) {
  document.querySelectorAll('.videos video').forEach(function (v) {
    if (restart) { v.currentTime = 0; } v.play();
  });
}
function pauseAll() { document.querySelectorAll('.videos video').forEach(function (v) { v.pause(); }); }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return _e(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def _plural(n: Any, word: str) -> str:
    return f"{_e(n)} {word}" + ("" if n == 1 else "s")


def _move(t: Any) -> str:
    if not t:
        return "nowhere"
    names = ("right (x)", "down (y)", "forward (z)")
    parts = [f"{abs(float(v)):.2f} m {'' if float(v) >= 0 else '-'}{n}" for v, n in zip(t, names) if float(v)]
    return " and ".join(parts) or "in place"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:04.1f} s"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
           row_class: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        cells = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(figs: dict[str, str], name: str, alt: str, caption: str) -> str:
    if name not in figs:
        return f'<p class="sub">({_e(alt)}: plot skipped, matplotlib is not available)</p>'
    return (f'<figure><img src="{_e(figs[name])}" alt="{_e(alt)}"><figcaption>{caption}</figcaption></figure>')


def _rel(path: str | None, out: Path) -> str | None:
    if not path:
        return None
    p = Path(path)
    try:
        return os.path.relpath(p, out) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def _link(path: str | None, out: Path, text: str | None = None) -> str:
    rel = _rel(path, out)
    if rel is None:
        return "–"
    return f'<a href="{_e(rel)}">{_e(text or rel)}</a>'


def _section_header(result: dict[str, Any]) -> str:
    cfg = result.get("config", {})
    gen = result.get("generate") or {}
    train = result.get("train") or {}
    pre = result.get("preprocess") or {}
    total = result.get("total_s")
    status = result.get("status", "finished")
    variant = "quick (test) variant" if cfg.get("quick") else "full demo"
    cards = [
        (_duration(total), "total wall time"),
        (f"{pre.get('samples', '–')} / {pre.get('inputs', '–')}", "training clips / videos"),
        (f"{train.get('steps', '–')}", f"training steps ({cfg.get('preset', '?')} preset)"),
        (f"{gen.get('frames', '–')} × {len(gen.get('modes') or {})}", "generated frames × memory modes"),
    ]
    modes = gen.get("modes") or {}
    if modes.get("latent", {}).get("chunks") and modes.get("rgb", {}).get("chunks"):
        lb = modes["latent"]["chunks"][-1]["cache_bytes"]
        rb = modes["rgb"]["chunks"][-1]["cache_bytes"]
        if lb:
            cards.append((f"{rb / lb:.0f}×", "smaller memory: latent vs RGB cache"))
    cards_html = "".join(f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
                         for v, k in cards)
    ran = (f"Synthesised {_e(cfg.get('n_videos'))} videos &rarr; preprocessed them with <b>Ray Data</b> into "
           f"WebDataset shards &rarr; trained the <code>{_e(cfg.get('preset'))}</code> model (memory branch, "
           f"then LoRA) with <b>Ray Train</b> &rarr; generated a {_e(gen.get('frames', '?'))}-frame pan-and-return "
           f"video with each memory mode &rarr; measured how consistent the frames are when the camera "
           f"returns to a pose it has seen. Everything is logged to a local <b>MLflow</b> store.")
    bad = "" if status == "finished" else f'<p class="note bad">Status: {_e(status)}</p>'
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("timings", "timings"), ("data", "data"), ("training", "training"), ("videos", "videos"),
        ("trajectory", "trajectory"), ("memory", "memory"), ("revisit", "revisit consistency"),
        ("links", "files & MLflow")))
    return (f"<h1>Mirage demo report</h1>"
            f'<p class="sub">{_e(variant)} · demo id <code>{_e(result.get("demo_id", "?"))}</code> · '
            f'started {_e(result.get("started_at", "?"))} · {_e(result.get("host", ""))}</p>'
            f"{bad}<p>{ran}</p><div class=\"cards\">{cards_html}</div><nav>Jump to: {nav}</nav>")


def _section_timings(result: dict[str, Any]) -> str:
    timings = result.get("timings") or []
    total = result.get("total_s") or sum(t["seconds"] for t in timings) or 1.0
    rows = []
    for t in timings:
        frac = t["seconds"] / total if total else 0.0
        rows.append([_e(t["stage"]), _e(t.get("detail", "")), _duration(t["seconds"]),
                     f'<span class="bar" style="width:{max(1, round(160 * frac))}px"></span> {100 * frac:.0f}%'])
    rows.append(["total", "", _duration(result.get("total_s")), ""])
    budget = result.get("config", {}).get("budget_s")
    note = ""
    if budget and result.get("total_s"):
        ok = result["total_s"] <= budget
        note = (f'<p class="{"ok" if ok else "bad"}">{"Within" if ok else "Over"} the {budget / 60:.0f}-minute '
                f"budget of the demo on a 2-core machine.</p>")
    return ('<h2 id="timings">Per-stage timings</h2>'
            + _table(["stage", "what", "wall time", "share"], rows, numeric=[2],
                     row_class=[""] * (len(rows) - 1) + ["total"]) + note)


def _section_data(result: dict[str, Any], out: Path) -> str:
    pre = result.get("preprocess") or {}
    if not pre:
        return ""
    status = ", ".join(f"{k}: {v}" for k, v in sorted((pre.get("status") or {}).items())) or "–"
    reasons = pre.get("reason") or {}
    rej = (", ".join(f"{_e(k)} ({v})" for k, v in sorted(reasons.items())) if reasons else "none")
    rows = []
    for r in pre.get("inputs_detail", []):
        rows.append([_e(r.get("name")), f'<span class="{"ok" if r.get("status") == "ok" else "bad"}">'
                     f'{_e(r.get("status"))}</span>', _e(r.get("reason") or ""),
                     _fmt(r.get("registered_fraction"), 2), _fmt(r.get("reprojection_error_px"), 2),
                     _fmt(r.get("depth_coverage"), 2), _fmt(r.get("moving_fraction"), 3)])
    stage_s = pre.get("stage_seconds") or {}
    ssum = sum(stage_s.values()) or 1.0
    stage_txt = ", ".join(f"{k} {v:.1f} s ({100 * v / ssum:.0f}%)" for k, v in stage_s.items() if v)
    table = _table(["video", "status", "reason", "registered", "reproj. err (px)", "depth coverage",
                    "moving fraction"], rows, numeric=[3, 4, 5, 6]) if rows else ""
    return (f'<h2 id="data">Data: synthetic videos &rarr; Ray Data shards</h2>'
            f"<p>{_e(pre.get('inputs', '?'))} videos ({_e(pre.get('video_size', ''))}, "
            f"{_e(pre.get('video_frames', '?'))} frames each) &rarr; <b>{_e(pre.get('samples', '?'))} training "
            f"clips</b> of {_e(pre.get('clip_frames', '?'))} frames in {_plural(pre.get('shards'), 'shard')}. "
            f"Status: {_e(status)}. Rejected: {rej}.</p>"
            f"<p>Per clip the pipeline estimates camera poses ({_e(_poses_words(result))}), depth (plane sweep), "
            f"static masks (optical flow) and the latents ({_e(_vae_words(result))}). Stage time summed over workers: "
            f"{_e(stage_txt) or '–'}.</p>{table}"
            f"<p>Manifest: {_link(pre.get('manifest'), out)}</p>")


def _vae_words(result: dict[str, Any]) -> str:
    vae = (result.get("world") or {}).get("vae") or (result.get("config") or {}).get("vae")
    return f"the VAE in {vae} (trained by mirage train-vae)" if vae else "random tiny-VAE"


def _poses_words(result: dict[str, Any]) -> str:
    file = (result.get("config") or {}).get("poses") == "file"
    return "read from the videos' camera files" if file else "SfM with pycolmap"


def _section_training(result: dict[str, Any], figs: dict[str, str], out: Path) -> str:
    train = result.get("train") or {}
    if not train:
        return ""
    rows = [[_e(s["name"]), _e(s["steps"]), _e(s.get("lr")), _e(s.get("trains", ""))] for s in train.get("stages", [])]
    cap = ("Train loss per optimizer step (light) and its moving mean (dark), and the loss on a fixed "
           "validation batch (orange). Shaded: stage 1 trains the memory branch with the backbone frozen; "
           "stage 2 trains the LoRA with the branch frozen.")
    nums = (f"train loss {_fmt(train.get('loss_start'), 3)} &rarr; {_fmt(train.get('loss_end'), 3)} "
            f"(mean of the first / last {train.get('loss_window', 10)} steps); validation loss "
            f"{_fmt(train.get('val_loss_start'), 3)} &rarr; {_fmt(train.get('val_loss_end'), 3)}")
    return (f'<h2 id="training">Training (Ray Train, {_e(train.get("workers", "?"))} workers)</h2>'
            f"<p>{_e(train.get('steps', '?'))} steps on {_e(train.get('samples', '?'))} clips in "
            f"{_duration(train.get('seconds'))}: {nums}.</p>"
            + _table(["stage", "steps", "learning rate", "trains"], rows, numeric=[1])
            + _figure(figs, "loss", "training and validation loss", cap)
            + f"<p>Checkpoint: {_link(train.get('checkpoint'), out)}</p>")


def _section_videos(result: dict[str, Any], figs: dict[str, str], out: Path) -> str:
    gen = result.get("generate") or {}
    modes = gen.get("modes") or {}
    if not modes:
        return ""
    items = []
    ref = gen.get("reference")
    entries = ([("reference", ref, "the synthetic scene rendered at the same cameras (what a perfect model would show)")]
               if ref else [])
    entries += [(m, v.get("video"), _e(f"revisit PSNR {_fmt(v.get('revisit', {}).get('psnr'), 2)} dB · "
                                        f"SSIM {_fmt(v.get('revisit', {}).get('ssim'), 3)}"))
                for m, v in modes.items()]
    for name, video, sub in entries:
        label = "ground-truth render" if name == "reference" else MODE_LABELS.get(name, name)
        rel = _rel(video, out)
        items.append(f'<figure><div class="lab"><span class="swatch" style="background:{MODE_COLORS.get(name, "#999")}">'
                     f'</span>{_e(label)}</div><video controls loop muted playsinline preload="auto" '
                     f'src="{_e(rel)}"></video><figcaption>{sub} · <a href="{_e(rel)}">mp4</a></figcaption></figure>')
    cfg = gen.get("settings") or {}
    info = (f"{_e(gen.get('frames'))} frames at {_e(gen.get('height'))}×{_e(gen.get('width'))}, "
            f"{_e(cfg.get('steps'))} denoising steps per chunk, chunks of 33 frames (each later chunk adds 32), "
            f"same seed for every mode, first frame rendered from the synthetic scene (its true depth "
            f"seeds the memory). Camera: yaw 0&deg; &rarr; {_fmt(gen.get('yaw_degrees'), 0)}&deg; &rarr; 0&deg; "
            f"(turning right and back) while moving {_move(gen.get('translation'))} and back.")
    strip = _figure(figs, "frames", "frames out and back",
                    "Frames on the way out (green border) and at the same poses on the way back (purple border). "
                    "A model with a working spatial memory should show matching columns.")
    preset = "<code>" + _e((result.get("config") or {}).get("preset", "?")) + "</code>"
    if (result.get("world") or {}).get("init"):
        random = ('<p class="note">What to expect: the model is the CPU world the repository ships (<code>'
                  + _e((result.get("config") or {}).get("world")) + "</code>, rebuilt by <code>make world</code>): "
                  f"the {preset} transformer trained from scratch on out-and-back synthetic clips whose memory "
                  "holds what the context does not show, fine-tuned above on this demo's clips, decoding through "
                  f"{_e(_vae_words(result))}. Frames are recognisable up to that VAE's blur; the memories differ "
                  "on the way back, where the table below scores each against the ground truth. The pipeline is "
                  "the real one; with the Wan2.2-TI2V-5B weights (<code>mirage generate --model-dir</code>) the "
                  "same code produces real video.</p>")
    elif (result.get("world") or {}).get("vae") or (result.get("config") or {}).get("vae"):
        random = ('<p class="note">What to expect: the demo builds its transformer offline with random weights '
                  f"(no download), the {preset} preset trained for a few minutes above, and decodes through "
                  f"{_e(_vae_words(result))}: frames are recognisable up to that VAE's blur, while what the "
                  "transformer adds is what a few minutes of training give. The pipeline is the real one; with the "
                  "Wan2.2-TI2V-5B weights (<code>mirage generate --model-dir</code>) the same code produces real "
                  "video.</p>")
    else:
        random = ('<p class="note">What to expect: the demo builds its models offline with random weights (no '
                  f"download): the {preset} transformer trained for a few minutes above, and a random tiny VAE. "
                  "Decoded frames are therefore noise-like textures, even frame 0 (the given first image, passed "
                  "through the random VAE); <code>--set vae=DIR</code> uses a VAE trained by <code>mirage "
                  "train-vae</code> instead. The pipeline is the real one; with the Wan2.2-TI2V-5B weights "
                  "(<code>mirage generate --model-dir</code>) the same code produces real video.</p>")
    return (f'<h2 id="videos">Generated videos</h2><p>{info}</p>{random}'
            f'<p><button onclick="playAll(true)">&#9654; play all from the start</button> '
            f'<button onclick="pauseAll()">pause all</button></p>'
            f'<div class="videos">{"".join(items)}</div>{strip}')


def _section_trajectory(result: dict[str, Any], figs: dict[str, str], out: Path) -> str:
    gen = result.get("generate") or {}
    cap = ("Top: camera centres seen from above (x right, z forward); arrows show where each camera looks, "
           "colour = frame. The way back revisits the outgoing poses exactly; it is drawn a few centimetres "
           "lower so both legs are visible. Bottom: the yaw of each frame, with the generation chunks shaded and "
           "some revisit pairs (frame i out, frame N-1-i back) linked by grey arcs.")
    cams = gen.get("cameras")
    link = f"<p>Cameras (RealEstate10K format): {_link(cams, out)}</p>" if cams else ""
    return '<h2 id="trajectory">Camera trajectory</h2>' + _figure(figs, "trajectory", "camera trajectory", cap) + link


def _section_memory(result: dict[str, Any], figs: dict[str, str]) -> str:
    modes = (result.get("generate") or {}).get("modes") or {}
    lat, rgb = modes.get("latent", {}).get("chunks", []), modes.get("rgb", {}).get("chunks", [])
    if not (lat or rgb):
        return ""
    rows = []
    for i in range(max(len(lat), len(rgb))):
        a = lat[i] if i < len(lat) else {}
        b = rgb[i] if i < len(rgb) else {}
        ratio = (b.get("cache_bytes", 0) / a["cache_bytes"]) if a.get("cache_bytes") else None
        rows.append([f"chunk {i}", _fmt(a.get("cache_points")), _fmt(a.get("cache_bytes", 0) / 1024, 1),
                     _fmt(a.get("hole_rate"), 2), _fmt(b.get("cache_points")), _fmt(b.get("cache_bytes", 0) / 1024, 1),
                     _fmt(b.get("hole_rate"), 2), f"{ratio:.0f}×" if ratio else "–"])
    table = _table(["after", "latent points", "latent KiB", "latent holes", "RGB points", "RGB KiB", "RGB holes",
                    "RGB / latent"], rows, numeric=[1, 2, 3, 4, 5, 6, 7])
    spf = []
    for m, v in modes.items():
        ch = v.get("chunks", [])
        spf.append([_e(MODE_LABELS.get(m, m))] + [_fmt(c.get("seconds_per_frame"), 2) for c in ch])
    n = max((len(v.get("chunks", [])) for v in modes.values()), default=0)
    spf_table = (_table(["mode"] + [f"chunk {i}" for i in range(n)], spf, numeric=list(range(1, n + 1)))
                 + '<p class="sub">Per chunk: denoising, VAE decode and, with a memory, stereo depth of the new '
                   "frames and the memory update. CPU timings on a small shared machine are noisy; the first mode "
                   "run also pays one-off warm-up costs.</p>")
    cap = ("What each memory holds after each chunk. The latent memory stores one 48-channel fp16 latent per "
           "16×16-pixel cell; the RGB cache stores one coloured point per pixel. Log scale.")
    growth = ""
    if len(lat) > 1 and lat[0].get("cache_points"):
        grew = (lat[-1]["cache_points"] - lat[0]["cache_points"]) / lat[0]["cache_points"]
        if grew < 0.25:
            growth = ('<p class="note">Why the memories hardly grow after chunk 0: after each chunk only pixels '
                      "with a valid stereo depth that also pass the static-scene check are written back. On this "
                      "untrained model's noise-like frames almost none do, so the read-out stays mostly empty where "
                      "the camera has turned to (the hole rate of the middle chunk). With a trained model, new parts "
                      "of the room are added as they come into view.</p>")
    return ('<h2 id="memory">Memory growth per chunk</h2>'
            + _figure(figs, "memory", "memory growth", cap) + table + growth
            + "<p class=\"sub\">holes: fraction of the chunk's target view the memory could not fill when it was read "
              "(before the chunk was generated).</p>"
            + "<h3>Seconds per generated frame (CPU)</h3>" + spf_table)


def revisit_reading(modes: dict[str, dict]) -> str:
    """What the revisit figures say, in words generated from them: which memory comes back closest
    to the ground truth, by how much against no memory, and whether the way back repeats the way out."""
    gt = {m: v.get("revisit_psnr_gt") for m, v in modes.items() if _finite(v.get("revisit_psnr_gt"))}
    out_back = {m: (v.get("revisit") or {}).get("psnr") for m, v in modes.items()
                if _finite((v.get("revisit") or {}).get("psnr"))}
    words = []
    if gt:
        best = max(gt, key=gt.get)
        label = MODE_LABELS.get(best, best)
        words.append(f"On the way back, {label} comes closest to the ground truth ({gt[best]:.2f} dB)")
        if "none" in gt and best != "none":
            gain = gt[best] - gt["none"]
            words[-1] += f", {gain:+.2f} dB against no memory ({gt['none']:.2f} dB)"
        words[-1] += "."
        if "latent" in gt and "rgb" in gt:
            d = gt["latent"] - gt["rgb"]
            words.append(f"The latent memory is {abs(d):.2f} dB {'above' if d >= 0 else 'below'} the RGB cache.")
        spread = max(gt.values()) - min(gt.values())
        if len(gt) > 1 and spread < 0.1:
            words.append(f"The modes are within {spread:.2f} dB of each other: the memory changes little here.")
    if out_back:
        best = max(out_back, key=out_back.get)
        words.append(f"The way back repeats the way out most closely with {MODE_LABELS.get(best, best)} "
                     f"({out_back[best]:.2f} dB between frames at the same pose).")
    return " ".join(words)


def _section_revisit(result: dict[str, Any], figs: dict[str, str] | None = None) -> str:
    figs = figs or {}
    modes = (result.get("generate") or {}).get("modes") or {}
    if not modes:
        return ""
    rows = []
    for m, v in modes.items():
        r = v.get("revisit") or {}
        last = (v.get("chunks") or [{}])[-1]
        rows.append([f'<span class="swatch" style="background:{MODE_COLORS.get(m, "#999")}"></span>'
                     f"{_e(MODE_LABELS.get(m, m))}", _fmt(v.get("revisit_psnr_gt"), 2), _fmt(r.get("psnr"), 2),
                     _fmt(r.get("ssim"), 3), _e(r.get("pairs", "–")), _fmt(last.get("cache_bytes", 0) / 1024, 1),
                     _duration(v.get("seconds"))])
    ref = (result.get("generate") or {}).get("reference_revisit")
    if ref:
        ident = _finite(ref.get("psnr")) and ref["psnr"] >= 99.99
        rows.append(["ground-truth render (the ceiling)", "–", "identical (&infin;)" if ident
                     else _fmt(ref.get("psnr"), 2), _fmt(ref.get("ssim"), 3), _e(ref.get("pairs", "–")), "–", "–"])
    reading = revisit_reading(modes)
    return ('<h2 id="revisit">Revisit consistency</h2>'
            "<p>PSNR against the ground truth on the way back, and mean PSNR / SSIM between frame <i>i</i> on "
            "the way out and frame <i>N-1-i</i> on the way back (identical camera pose, at least 8 frames "
            "apart). Higher = the model remembers what it showed.</p>"
            + _table(["memory mode", "PSNR vs ground truth, way back (dB)", "out vs back PSNR (dB)", "SSIM", "pairs",
                      "final cache (KiB)", "generation time"], rows, numeric=[1, 2, 3, 4, 5, 6])
            + (f'<p class="note" id="revisit-reading">{_e(reading)}</p>' if reading else "")
            + (_figure(figs, "psnr", "PSNR against the ground truth per frame",
                       "PSNR of every generated frame against the ground-truth render at its camera, per memory "
                       "mode; the shaded half is the way back, where a memory has something to give.")
               if "psnr" in figs else "")
            + _section_readouts(modes, figs))


def _section_readouts(modes: dict[str, dict], figs: dict[str, str]) -> str:
    """For each memory mode: the ground truth, what its memory showed and what the model generated."""
    parts = []
    for m in modes:
        if f"readout_{m}" not in figs:
            continue
        label = MODE_LABELS.get(m, m)
        parts.append(f'<div id="readout-{_e(m)}">' + _figure(
            figs, f"readout_{m}", f"{label}: memory readout and generated frames",
            f"{_e(label)}: the ground truth (top), what the memory held for each view, decoded through the VAE "
            "(middle; dark grey where it had nothing), and the frame generated from it (bottom).") + "</div>")
    if not parts:
        return ""
    return ('<h3 id="readouts">What each memory holds, and what the model made of it</h3>' + "".join(parts))


def _section_links(result: dict[str, Any], out: Path) -> str:
    ml = result.get("mlflow") or {}
    pre = result.get("preprocess") or {}
    train = result.get("train") or {}
    gen = result.get("generate") or {}
    rows = [["shards manifest", _link(pre.get("manifest"), out)],
            ["shards", _link(pre.get("output"), out)],
            ["checkpoint (branch + LoRA)", _link(train.get("checkpoint"), out)],
            ["generated outputs", _link(gen.get("output"), out)],
            ["result summary (JSON)", _link(result.get("summary_json"), out)]]
    ui = ml.get("ui_command", "")
    url = ml.get("ui_url", "")
    mlrows = [["tracking store", f"<code>{_e(ml.get('tracking_uri', '–'))}</code>"],
              ["experiment", f"{_e(ml.get('experiment', '–'))} (id {_e(ml.get('experiment_id', '–'))})"],
              ["demo run", f"<code>{_e(ml.get('run_id', '–'))}</code>" + (f' · <a href="{_e(url)}">open in mlflow ui</a>' if url else "")],
              ["training run", f"<code>{_e(ml.get('train_run_id', '–'))}</code>" +
               (f' · <a href="{_e(ml.get("train_ui_url"))}">open in mlflow ui</a>' if ml.get("train_ui_url") else "")],
              ["tag on both runs", f"<code>mirage.demo = {_e(result.get('demo_id', '?'))}</code>"]]
    cfg = result.get("config") or {}
    return ('<h2 id="links">Files and MLflow</h2>' + _table(["what", "where"], rows)
            + "<h3>MLflow</h3>" + _table(["what", "value"], mlrows)
            + (f"<p>Start the UI (the links above work once it runs):</p><pre>{_e(ui)}</pre>" if ui else "")
            + "<details><summary>Demo configuration (<code>jobs.demo.DemoConfig</code>)</summary>"
            + _table(["setting", "value"], [[f"<code>{_e(k)}</code>", _e(json.dumps(v, default=str))]
                                            for k, v in cfg.items()]) + "</details>")


def render_html(result: dict[str, Any], figures: dict[str, str], out_dir: str | os.PathLike) -> str:
    out = Path(out_dir).resolve()
    body = "".join([_section_header(result), _section_timings(result), _section_data(result, out),
                    _section_training(result, figures, out), _section_videos(result, figures, out),
                    _section_trajectory(result, figures, out), _section_memory(result, figures),
                    _section_revisit(result, figures), _section_links(result, out)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Mirage demo report · {_e(result.get('demo_id', ''))}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body><main>{body}</main></body></html>\n")


def write_report(out_dir: str | os.PathLike, result: dict[str, Any], figures: dict[str, str] | None = None,
                 name: str = REPORT_NAME) -> Path:
    """Write ``<out_dir>/report.html`` atomically; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    atomic_write_text(path, render_html(result, figures or {}, out), encoding="utf-8")
    return path
