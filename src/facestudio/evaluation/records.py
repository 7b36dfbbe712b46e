"""Which images to score and what they were asked to show, read from the metadata facestudio writes.

`facestudio generate` stores every setting in each PNG (`imaging.save_png`): the identities by name with
their photos, regions and strengths, the prompt, seed and guidance scales. An image without that metadata
cannot say whom it should show: it is skipped, with the reason, and the rest is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..imaging import read_png_metadata

#: Files looked at in a folder of generated images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: The method of an image made by facestudio itself (baselines name theirs in `eval_method`).
FACESTUDIO = "facestudio"


@dataclass(frozen=True)
class ImageRecord:
    """One generated image and what it was asked to show.

    Attributes:
        path (`Path`): the image file.
        method (`str`): `"facestudio"`, or the baseline that made it (`"no identity"`, `"paste"`).
        identities (`tuple[str, ...]`): requested people, in generation order (empty for no identity).
        photos (`tuple[tuple[str, ...], ...]`): each person's photo names as recorded.
        regions (`tuple`): each person's requested box or None.
        mixed (`bool`): the people were blended into one face.
        prompt (`str`), seed (`int | None`), text_scale, reference_scale (`float | None`).
        scored_as (`tuple[str, ...]`): whom the image is scored against: the identities, or for a baseline
            with no identity, the people the matching facestudio image was asked for.
        timing (`dict`): seconds per stage, when the image was made by an evaluation run.
    """

    path: Path
    method: str
    identities: tuple[str, ...]
    photos: tuple[tuple[str, ...], ...]
    regions: tuple
    mixed: bool
    prompt: str
    seed: int | None
    text_scale: float | None
    reference_scale: float | None
    scored_as: tuple[str, ...]
    timing: dict = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The guidance settings as a label, e.g. `text 7.5 / ref 3`."""
        return f"text {_fmt(self.text_scale)} / ref {_fmt(self.reference_scale)}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:g}"


def read_folder(folder: Path) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """Every generated image of `folder` (sorted by name), and `(file, reason)` for each one skipped."""
    records, skipped = [], []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            metadata = read_png_metadata(path) if path.suffix.lower() == ".png" else None
        except (OSError, ValueError) as e:
            skipped.append((path.name, f"could not read its metadata ({e})"))
            continue
        if metadata is None:
            skipped.append((path.name, "no facestudio metadata: cannot tell which identities it should show"))
            continue
        if not isinstance(metadata, dict):
            skipped.append((path.name, f"its facestudio metadata is not a JSON object ({type(metadata).__name__})"))
            continue
        if "contact_sheet_of" in metadata:
            continue  # a contact sheet, not an image to score
        try:
            records.append(record_from_metadata(path, metadata))
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # hand-edited or foreign metadata
            skipped.append((path.name, f"its facestudio metadata has values of the wrong type ({type(e).__name__}: "
                                       f"{e})"))
    return records, skipped


def record_from_metadata(path: Path, metadata: dict) -> ImageRecord:
    """An `ImageRecord` from the JSON `generate` (or an evaluation run) wrote into the image."""
    people = metadata.get("identities") or []
    # `generate` writes dicts (name, photos, region, ...); the pipeline's own settings only names.
    names = tuple(p["name"] if isinstance(p, dict) else str(p) for p in people)
    photos = tuple(tuple(p.get("photos", ())) if isinstance(p, dict) else () for p in people)
    regions = tuple(tuple(p["region"]) if isinstance(p, dict) and p.get("region") else None for p in people)
    scored_as = tuple(metadata.get("eval_scored_as") or names)
    text = metadata.get("text_guidance_scale")
    reference = metadata.get("reference_guidance_scale", text)
    return ImageRecord(path=path, method=metadata.get("eval_method", FACESTUDIO), identities=names, photos=photos,
                       regions=regions, mixed=bool(metadata.get("mix")), prompt=str(metadata.get("prompt", "")),
                       seed=metadata.get("seed"), text_scale=text, reference_scale=reference, scored_as=scored_as,
                       timing=dict(metadata.get("eval_timing") or {}))
