"""The report's charts, drawn into PNG files with matplotlib's object API.

`Figure` objects rather than pyplot: no global figure state and no backend switch, so reports can be written
from several threads (the server) and from processes that use pyplot for something else.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..files import write_atomically

from .scoring import PRIMARY, THRESHOLDS
from .timing import STAGES


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))


def similarity_vs_reference_scale(settings: list[dict], path: Path) -> Path | None:
    """Identity similarity (SFace and dlib) against the reference guidance scale, one line per method."""
    rows = [r for r in settings if r["reference_scale"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, rec in zip(axes, THRESHOLDS):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["reference_scale"], r[f"{rec}_similarity"]) for r in rows
                            if r["method"] == method and r[f"{rec}_similarity"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.axhline(THRESHOLDS[rec], color="grey", linestyle="--", linewidth=1, label=f"threshold {THRESHOLDS[rec]}")
        ax.set_xlabel("reference guidance scale")
        ax.set_ylabel(f"identity similarity ({rec})")
        ax.set_title(rec + (" (primary)" if rec == PRIMARY else " (second opinion)"))
        ax.legend(fontsize=7)
    return _save(fig, path)


def text_reference_tradeoff(settings: list[dict], path: Path) -> Path | None:
    """Identity similarity against CLIP score, one point per guidance setting (labelled text/ref)."""
    rows = [r for r in settings if r["clip_score"] is not None and r[f"{PRIMARY}_similarity"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: (r["reference_scale"], r["text_scale"]))
        ax.plot([r["clip_score"] for r in mine], [r[f"{PRIMARY}_similarity"] for r in mine], marker="o", label=method)
        for r in mine:
            ax.annotate(f"{r['text_scale']:g}/{r['reference_scale']:g}", (r["clip_score"], r[f"{PRIMARY}_similarity"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("prompt alignment (CLIP score)")
    ax.set_ylabel(f"identity similarity ({PRIMARY})")
    ax.set_title("text vs reference trade-off (labels: text/reference scale)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def time_split(timing: list[dict], tuning: list[dict], facestudio_first: float | None, path: Path) -> Path | None:
    """Left: seconds per image by stage and method. Right: time to personalise, log scale."""
    if not timing and not tuning:
        return None
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    ax = axes[0]
    bottom = [0.0] * len(timing)
    for stage in STAGES:
        values = [r.get(stage) or 0.0 for r in timing]
        ax.bar([r["method"] for r in timing], values, bottom=bottom, label=stage.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per image")
    ax.set_title("time per image, by stage")
    ax.legend(fontsize=7)
    ax = axes[1]
    bars = ([("facestudio\n(photo to first image)", facestudio_first)] if facestudio_first else []) + \
        [(f"{t['method']}\n({t['steps']} steps)", t["training_seconds"]) for t in tuning]
    if bars:
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["tab:green"] + ["tab:red"] * (len(bars) - 1))
        ax.set_yscale("log")
        ax.set_ylabel("seconds (log scale)")
        ax.set_title("time to personalise")
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.set_visible(False)
    return _save(fig, path)
