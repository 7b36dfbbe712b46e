"""The numbers of a report, as rows of plain dicts: per method, per identity, per region, per setting.

Definitions (docs/evaluation.md gives them with their thresholds):

* detection rate: requested people for whom a face was found and matched, over requested people;
* identity similarity: mean cosine between a person's matched face and their reference photos (SFace; dlib
  beside it); above-threshold rate: share of matched faces at or above the recogniser's threshold;
* held-out similarity: the same against photos the generator never saw; copy-paste gap = reference minus
  held-out similarity (large for a generator that copies the reference's pixels);
* confusion rate (several people per image): matched faces more similar to another requested person;
* in-region rate: matched faces whose centre lies in the person's region;
* diversity: mean pairwise `1 - cos` (SFace) between one identity's faces across seeds, same prompt and setting.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from .baselines import TuningCost
from .evaluate import Evaluation, ImageResult
from .scoring import PRIMARY, THRESHOLDS
from .timing import STAGES


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _people(results: list[ImageResult]):
    """(result, person) for every requested person of every scored image."""
    return [(r, p) for r in results if r.score is not None for p in r.score.people]


def _identity_stats(pairs, results) -> dict:
    matched = [p for _, p in pairs if p.face is not None]
    multi = [p for r, p in pairs if p.confused is not None]
    row = {"images": len({id(r) for r in results}), "people": len(pairs),
           "detection_rate": len(matched) / len(pairs) if pairs else None}
    for rec in THRESHOLDS:
        sims = [p.similarity[rec] for p in matched]
        row[f"{rec}_similarity"] = _mean(sims)
        row[f"{rec}_above_threshold"] = (sum(s >= THRESHOLDS[rec] for s in sims) / len(sims)) if sims else None
        held = [p.held_out.get(rec) for p in matched]
        row[f"{rec}_held_out"] = _mean(held)
        gaps = [p.similarity[rec] - p.held_out[rec] for p in matched if rec in p.held_out]
        row[f"{rec}_copy_gap"] = _mean(gaps)
    row["confusion_rate"] = (sum(p.confused for p in multi) / len(multi)) if multi else None
    regions = [p.in_region for _, p in pairs if p.in_region is not None]
    row["in_region_rate"] = (sum(regions) / len(regions)) if regions else None
    return row


def diversity(results: list[ImageResult]) -> dict[tuple[str, str], float]:
    """(method, identity) -> mean pairwise SFace dissimilarity across seeds (same prompt and setting)."""
    groups = defaultdict(list)
    for r in results:
        if r.score is None:
            continue
        for p in r.score.people:
            if p.face is not None:
                key = (r.record.method, p.identity, r.record.prompt, r.record.setting)
                groups[key].append(r.score.face_vectors[PRIMARY][p.face])
    per = defaultdict(list)
    for (method, identity, _, _), vectors in groups.items():
        per[(method, identity)] += [1.0 - float(a @ b) for a, b in itertools.combinations(vectors, 2)]
    return {k: float(np.mean(v)) for k, v in per.items() if v}


def summarise(evaluation: Evaluation) -> dict[str, list[dict]]:
    """Tables: `methods`, `identities`, `regions`, `settings`, `timing`."""
    results = evaluation.results
    by_method = defaultdict(list)
    for r in results:
        by_method[r.record.method].append(r)
    div = diversity(results)
    tables = {"methods": [], "identities": [], "regions": [], "settings": [], "timing": []}
    for method, rs in by_method.items():
        pairs = _people(rs)
        row = {"method": method, **_identity_stats(pairs, rs),
               "faces_found_rate": sum(r.score is not None and r.score.faces > 0 for r in rs) / len(rs),
               "diversity": _mean([v for (m, _), v in div.items() if m == method]),
               "clip_score": _mean([r.clip for r in rs])}
        tables["methods"].append(row)
        for identity in dict.fromkeys(p.identity for _, p in pairs):
            mine = [(r, p) for r, p in pairs if p.identity == identity]
            tables["identities"].append({"method": method, "identity": identity,
                                         **_identity_stats(mine, [r for r, _ in mine]),
                                         "diversity": div.get((method, identity))})
        multi = [(r, p) for r, p in pairs if len(r.record.scored_as) > 1 and not r.record.mixed]
        for slot in sorted({p.slot for _, p in multi}):
            mine = [(r, p) for r, p in multi if p.slot == slot]
            tables["regions"].append({"method": method, "region": slot + 1, **_identity_stats(mine, [r for r, _ in mine])})
        settings = defaultdict(list)
        for r in rs:
            settings[(r.record.text_scale, r.record.reference_scale)].append(r)
        for (text, ref), group in sorted(settings.items(), key=lambda kv: tuple(v if v is not None else -1 for v in kv[0])):
            stats = _identity_stats(_people(group), group)
            tables["settings"].append({"method": method, "text_scale": text, "reference_scale": ref,
                                       "images": len(group), f"{PRIMARY}_similarity": stats[f"{PRIMARY}_similarity"],
                                       "dlib_similarity": stats["dlib_similarity"],
                                       "clip_score": _mean([r.clip for r in group])})
        timed = [r.record.timing for r in rs if r.record.timing]
        if timed:
            stage_means = {s: _mean([t.get(s) for t in timed]) for s in STAGES}
            tables["timing"].append({"method": method, "images": len(timed), **stage_means,
                                     "per_image": _mean([sum(t.get(s) or 0.0 for s in STAGES) for t in timed])})
    return tables


def personalisation(evaluation: Evaluation, tables: dict) -> list[dict]:
    """Time from photo to first image: facestudio's measured, and each tuning method's training (measured
    passes x usual count) plus one image's sampling on the same base (the no-identity baseline's time, else
    facestudio's own sampling), plus a recipe's class images at that sampling's time per step (none for the
    recipes the evaluation times). `ratio`: how many times facestudio's time."""
    first = evaluation.run.get("time_to_first_image_seconds")
    timing = {r["method"]: r for r in tables["timing"]}
    plain = timing.get("no identity") or timing.get("facestudio")
    sampling = sum(plain.get(s) or 0.0 for s in STAGES if s != "face_analysis") if plain else 0.0
    steps = evaluation.run.get("steps")
    per_step = (plain.get("denoising") or 0.0) / steps if plain and steps else 0.0  # for a recipe's class images
    rows = []
    if first:
        rows.append({"method": "facestudio", "training_seconds": 0.0, "sampling_seconds": first,
                     "total_seconds": first, "ratio": 1.0, "how": "measured: face analysis + encoding + sampling"})
    for cost in evaluation.tuning:
        total = TuningCost.from_dict(cost).personalisation_seconds(sampling, per_step)
        rows.append({"method": cost["method"], "training_seconds": cost["training_seconds"],
                     "sampling_seconds": sampling, "total_seconds": total,
                     "ratio": total / first if first else None,
                     "how": f"{cost['seconds_per_pass']:.3g} s/pass measured over {cost['passes_timed']} passes x "
                            f"{cost['steps']} steps x {cost['passes_per_step']} passes/step ({cost['source']})"})
    return rows
