"""The report: `report.html` (tables, contact sheets, charts; every image a file beside it, nothing fetched),
`report.md` (the same tables), `results.json` (every number, per image)."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

from ..files import write_atomically, write_json
from ..imaging import contact_sheet, load_image, save_png
from . import charts
from .evaluate import Evaluation
from .metrics import personalisation, summarise
from .scoring import PRIMARY, THRESHOLDS

#: Columns of each table, in order, with their headings.
COLUMNS = {
    "methods": [("method", "method"), ("images", "images"), ("faces_found_rate", "images with a face"),
                ("detection_rate", "people detected"), ("sface_similarity", "SFace sim. (ref)"),
                ("sface_above_threshold", f"SFace ≥ {THRESHOLDS['sface']}"), ("sface_held_out", "SFace sim. (held-out)"),
                ("sface_copy_gap", "copy-paste gap (SFace)"), ("dlib_similarity", "dlib sim. (ref)"),
                ("dlib_held_out", "dlib sim. (held-out)"), ("confusion_rate", "confusion"),
                ("in_region_rate", "in region"), ("diversity", "diversity"), ("clip_score", "CLIP score")],
    "identities": [("method", "method"), ("identity", "identity"), ("people", "images"),
                   ("detection_rate", "detected"), ("sface_similarity", "SFace sim. (ref)"),
                   ("sface_held_out", "SFace sim. (held-out)"), ("sface_copy_gap", "copy-paste gap"),
                   ("dlib_similarity", "dlib sim. (ref)"), ("confusion_rate", "confusion"), ("diversity", "diversity")],
    "regions": [("method", "method"), ("region", "region (left to right)"), ("people", "people"),
                ("detection_rate", "detected"), ("sface_similarity", "SFace sim."), ("dlib_similarity", "dlib sim."),
                ("in_region_rate", "in region"), ("confusion_rate", "confusion")],
    "settings": [("method", "method"), ("text_scale", "text scale"), ("reference_scale", "reference scale"),
                 ("images", "images"), ("sface_similarity", "SFace sim."), ("dlib_similarity", "dlib sim."),
                 ("clip_score", "CLIP score")],
    "timing": [("method", "method"), ("images", "images"), ("face_analysis", "face analysis s"),
               ("encoding", "encoding s"), ("denoising", "denoising s"), ("decoding", "decoding s"),
               ("per_image", "total s/image")],
    "personalisation": [("method", "method"), ("training_seconds", "training s"), ("sampling_seconds", "sampling s"),
                        ("total_seconds", "photo to first image s"), ("ratio", "× facestudio"), ("how", "how")],
}

TITLES = {"methods": "Summary by method", "identities": "Per identity", "regions": "Per region (several people)",
          "settings": "Per guidance setting", "timing": "Time per image",
          "personalisation": "Time to personalise"}


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _markdown_table(rows: list[dict], columns) -> str:
    head = "| " + " | ".join(h for _, h in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |\n" for r in rows)


def _html_table(rows: list[dict], columns) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for k, _ in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def contact_sheets(evaluation: Evaluation, folder: Path) -> dict[str, Path]:
    """One sheet per identity: its reference photo, then its images by method, labelled."""
    by_identity = defaultdict(list)
    for r in evaluation.results:
        for name in r.record.scored_as:
            by_identity[name].append(r)
    order = {m: i for i, m in enumerate(dict.fromkeys(r.record.method for r in evaluation.results))}
    sheets = {}
    for name, results in by_identity.items():
        thumbs, labels = [], []
        reference = evaluation.references.get(name)
        if reference is not None:
            thumbs.append(_thumb(load_image(reference.photos[0])))
            labels.append("reference")
        results = sorted(results, key=lambda r: (order[r.record.method], r.record.prompt, r.record.setting,
                                                 r.record.seed or 0))
        for r in results[:48]:  # a readable sheet; results.json has every image
            thumbs.append(_thumb(load_image(r.record.path)))
            person = next((p for p in r.score.people if p.identity == name), None) if r.score else None
            sim = person.similarity.get(PRIMARY) if person and person.face is not None else None
            labels.append(f"{r.record.method} s{r.record.seed}: " + ("no face" if sim is None else f"{sim:.2f}"))
        path = folder / "sheets" / f"{_safe(name)}.png"
        save_png(contact_sheet(thumbs, labels), path)
        sheets[name] = path
    return sheets


def _thumb(image, side: int = 192):
    """Scaled to `side` on its longest edge (small test images are enlarged, so faces stay visible)."""
    from PIL import Image

    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "identity"


def write_report(evaluation: Evaluation, folder: Path, title: str = "facestudio evaluation") -> dict[str, Path]:
    """Write report.html, report.md, results.json, charts/ and sheets/ into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = summarise(evaluation)
    tables["personalisation"] = personalisation(evaluation, tables)
    first = evaluation.run.get("time_to_first_image_seconds")
    chart_paths = {
        "identity similarity vs reference scale": charts.similarity_vs_reference_scale(
            tables["settings"], folder / "charts" / "similarity-vs-reference-scale.png"),
        "text vs reference trade-off": charts.text_reference_tradeoff(
            tables["settings"], folder / "charts" / "text-reference-tradeoff.png"),
        "time split": charts.time_split(tables["timing"], evaluation.tuning, first, folder / "charts" / "time-split.png"),
    }
    skipped = list(evaluation.skipped)
    if chart_paths["text vs reference trade-off"] is None:
        skipped.append(("chart: text vs reference trade-off", "needs CLIP scores (--clip MODEL) and faces scored"))
    sheets = contact_sheets(evaluation, folder)

    notes = [f"Identity similarity: cosine of face embeddings; **SFace** (OpenCV zoo, never used to condition) is "
             f"the primary judge (same person at ≥ {THRESHOLDS['sface']}), **dlib** (the recogniser facestudio "
             f"conditions on) the second opinion (same person at ≥ {THRESHOLDS['dlib']}). Faces are matched to "
             "people by the Hungarian algorithm on SFace similarity."]
    if evaluation.clip_model:
        notes.append(f"CLIP score: 100 × cosine(text, image) with `{evaluation.clip_model}`.")
    run = evaluation.run

    md = [f"# {title}\n", *(n + "\n" for n in notes)]
    if run:
        md.append("## Run\n\n" + "".join(f"- {k}: {_cell(v)}\n" for k, v in run.items()))
    for name, rows in tables.items():
        if rows:
            md.append(f"## {TITLES[name]}\n\n" + _markdown_table(rows, COLUMNS[name]))
    md.append("## Skipped\n\n" + ("".join(f"- {html.escape(w)}: {html.escape(why)}\n" for w, why in skipped)
                                  if skipped else "Nothing was skipped.\n"))
    md.append("## Charts and contact sheets\n\n" + "".join(f"- {k}: {p.relative_to(folder)}\n"
                                                          for k, p in chart_paths.items() if p)
              + "".join(f"- contact sheet {k}: {p.relative_to(folder)}\n" for k, p in sheets.items()))
    write_atomically(folder / "report.md", "\n".join(md).encode())

    parts = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{_md_inline(n)}</p>" for n in notes)]
    if run:
        parts.append("<h2>Run</h2><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(_cell(v))}</li>"
                                                  for k, v in run.items()) + "</ul>")
    for name, rows in tables.items():
        if rows:
            parts.append(f"<h2>{html.escape(TITLES[name])}</h2>" + _html_table(rows, COLUMNS[name]))
    parts.append("<h2>Charts</h2>" + "".join(
        f'<figure><img src="{p.relative_to(folder).as_posix()}" alt="{html.escape(k)}"><figcaption>{html.escape(k)}'
        "</figcaption></figure>" for k, p in chart_paths.items() if p))
    parts.append("<h2>Contact sheets</h2>" + "".join(
        f'<figure><img src="{p.relative_to(folder).as_posix()}" alt="{html.escape(k)}"><figcaption>{html.escape(k)}'
        "</figcaption></figure>" for k, p in sheets.items()))
    parts.append('<h2 id="skipped">Skipped</h2>' + ("<ul>" + "".join(
        f"<li><b>{html.escape(w)}</b>: {html.escape(why)}</li>" for w, why in skipped) + "</ul>"
        if skipped else "<p>Nothing was skipped.</p>"))
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
            "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}</style></head>"
            "<body>" + "".join(parts) + "</body></html>")
    write_atomically(folder / "report.html", page.encode())

    per_image = [{"image": str(r.record.path), "method": r.record.method, "prompt": r.record.prompt,
                  "seed": r.record.seed, "text_scale": r.record.text_scale, "reference_scale": r.record.reference_scale,
                  "faces": r.score.faces if r.score else None, "clip_score": r.clip, "timing": r.record.timing,
                  "people": [{"identity": p.identity, "slot": p.slot, "face": p.face, "box": p.box,
                              "similarity": p.similarity, "held_out": p.held_out, "in_region": p.in_region,
                              "confused": p.confused} for p in (r.score.people if r.score else ())]}
                 for r in evaluation.results]
    results = {"thresholds": THRESHOLDS, "primary": PRIMARY, "clip_model": evaluation.clip_model, "run": run,
               "tables": tables, "tuning": evaluation.tuning, "skipped": [list(s) for s in skipped],
               "images": per_image}
    write_json(folder / "results.json", results, default=_json)
    return {"html": folder / "report.html", "markdown": folder / "report.md", "json": folder / "results.json",
            **{f"chart: {k}": p for k, p in chart_paths.items() if p}}


def _md_inline(text: str) -> str:
    """`**bold**` and `` `code` `` of a note, as HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _json(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
