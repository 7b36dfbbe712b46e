"""Training examples from a face cache: masked-face reconstruction (FaceStudio, arXiv 2312.02663, sec. 3.5).

Each example asks the model to rebuild a photo (the target) from
* the photo with its face hidden (the style condition: body, clothes, scene, look are given),
* the aligned face's identity features (the identity condition: who it is),
* the caption (the text condition),
so the only source of the face is the identity input. Conditions are dropped at random, each alone and all
together, so that classifier-free guidance (guidance/cfg.py) has an unconditional, a text-only and a full
prediction to combine. Multi-identity examples put two or more photos side by side, each identity limited
to its own person's region, so that the region-masked attention learns to keep people apart.

An example is a pure function of `(seed, position)`: the same position gives the same example in every run,
which is what lets a resumed run continue the very same loss curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import FaceStudioError
from .prepare import read_manifest

#: Grey that fills the hidden face (mid-range, so it reads as "unknown", not as a dark or light face).
MASK_FILL = 127


@dataclass(frozen=True)
class ConditionDropout:
    """How often each condition is replaced by its "none" input during training.

    Attributes:
        text (`float`): the caption becomes empty.
        identity (`float`): the identity becomes the null identity (zero embedding and detail).
        style (`float`): the style embedding becomes zeros.
        all (`float`): all three at once (the unconditional prediction).
    """

    text: float = 0.05
    identity: float = 0.05
    style: float = 0.05
    all: float = 0.05

    def check(self) -> None:
        for name, rate in vars(self).items():
            if not 0.0 <= rate <= 1.0:
                raise FaceStudioError(f"{name} drop rate {rate}: must be between 0 and 1")


class FaceCache:
    """The samples of a face cache made by `prepare_dataset`, read on demand."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        manifest = read_manifest(self.root)
        self.samples = manifest["samples"]
        self.resolution = manifest["settings"]["resolution"]
        if not self.samples:
            raise FaceStudioError(f"{cache_dir}: the cache holds no usable photo (see its report.txt)")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> dict:
        """The arrays of sample `index` plus its `caption`."""
        entry = self.samples[index]
        with np.load(self.root / entry["file"]) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["caption"] = entry.get("caption", "")
        return arrays


class ReconstructionDataset(Dataset):
    """Masked-face reconstruction examples; item `position` of an endless stream.

    Args:
        cache (`FaceCache`): the prepared photos.
        seed (`int`): with the position, decides everything random about an example.
        dropout (`ConditionDropout`): condition drop rates.
        multi_identity (`float`, defaults to 0.0): share of examples composed of several photos.
        max_identities (`int`, defaults to 1): identity slots per example (2 or more for composites);
            single-identity examples fill the rest with a null identity whose region is empty.
        default_caption (`str`): caption of photos that have none.
    """

    def __init__(self, cache: FaceCache, seed: int = 0, dropout: ConditionDropout = ConditionDropout(),
                 multi_identity: float = 0.0, max_identities: int = 1, default_caption: str = ""):
        dropout.check()
        if not 0.0 <= multi_identity <= 1.0:
            raise FaceStudioError(f"multi-identity share {multi_identity}: must be between 0 and 1")
        if max_identities < 1 or (multi_identity > 0 and max_identities < 2):
            raise FaceStudioError(f"max identities {max_identities}: must be at least 1, and 2 or more for "
                                  "multi-identity examples")
        self.cache, self.seed, self.dropout = cache, seed, dropout
        self.multi_identity, self.max_identities = multi_identity, max_identities
        self.default_caption = default_caption
        self._order = (-1, None)  # the last epoch's order: consecutive positions share it

    def __len__(self) -> int:
        return len(self.cache)

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled sample order of one pass over the cache."""
        return np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.cache))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """`order(epoch)`, computed once per epoch rather than once per example."""
        if self._order[0] != epoch:
            self._order = (epoch, self.order(epoch))
        return self._order[1]

    def __getitem__(self, position: int) -> dict:
        n = len(self.cache)
        main = int(self._epoch_order(position // n)[position % n])
        rng = np.random.default_rng([self.seed, position, 2])
        chosen = [main]
        if n > 1 and self.multi_identity > 0 and rng.random() < self.multi_identity:
            count = int(rng.integers(2, min(self.max_identities, n) + 1))
            # `rng.choice` over the n - 1 other samples: it draws positions in that list, and the sample at
            # position p of [0..n) without `main` is p + (p >= main); no list of all of them is built
            picks = rng.choice(n - 1, count - 1, replace=False)
            chosen += [int(p) + int(p >= main) for p in picks]
        samples = [self.cache.load(i) for i in chosen]
        parts = compose_side_by_side(samples) if len(samples) > 1 else samples[0]
        drop_all = rng.random() < self.dropout.all
        drop_text = drop_all or rng.random() < self.dropout.text
        drop_identity = drop_all or rng.random() < self.dropout.identity
        drop_style = drop_all or rng.random() < self.dropout.style
        return self._example(samples, parts, drop_text, drop_identity, drop_style)

    def _example(self, samples, parts, drop_text, drop_identity, drop_style) -> dict:
        slots, count = self.max_identities, len(samples)
        size = parts["image"].shape[0]
        person_masks = np.zeros((slots, size, size), np.float32)
        # one person acts on the whole image, as at inference without a region; several, each in their own
        person_masks[:count] = parts["person_masks"] if count > 1 else 1.0
        landmarks = np.zeros((slots, 5, 2), np.float32)
        landmarks[:count] = parts["landmarks"] if count > 1 else parts["landmarks"][None]
        embeddings = np.zeros((slots, 128), np.float32)
        detail = np.zeros((slots,) + samples[0]["detail"].shape, np.float32)
        present = np.zeros(slots, bool)
        if not drop_identity:  # a dropped identity is the null identity, acting through the same regions
            embeddings[:count] = [s["embedding"] for s in samples]
            detail[:count] = [s["detail"].astype(np.float32) for s in samples]
            present[:count] = True
        conditioning = masked_condition(parts["image"], parts["face_mask"])
        captions = [s["caption"] or self.default_caption for s in samples]
        caption = "" if drop_text else ", ".join(c for c in captions if c)
        return {
            "pixel_values": torch.from_numpy(parts["image"]).permute(2, 0, 1).float() / 127.5 - 1.0,
            "conditioning": torch.from_numpy(conditioning),
            "caption": caption,
            "id_embeddings": torch.from_numpy(embeddings),
            "id_detail": torch.from_numpy(detail),
            "id_masks": torch.from_numpy(person_masks),
            "id_present": torch.from_numpy(present),
            "id_landmarks": torch.from_numpy(landmarks),
            "identity_count": count,
            "drop_style": drop_style,
        }


def masked_condition(image: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
    """The style condition of a photo: a copy with the face (`face_mask`) filled with `MASK_FILL`."""
    condition = image.copy()
    condition[face_mask] = MASK_FILL
    return condition


def compose_side_by_side(samples: list[dict]) -> dict:
    """Several prepared photos as one image: a vertical strip of each around its face, left to right.

    Returns the composite `image`, the union `face_mask`, and per person `person_masks` `[N, H, W]` (each
    limited to its own strip, so the regions are disjoint) and `landmarks` `[N, 5, 2]` in composite pixels.
    """
    size = samples[0]["image"].shape[0]
    count = len(samples)
    edges = [round(i * size / count) for i in range(count + 1)]
    image = np.empty_like(samples[0]["image"])
    face_mask = np.zeros((size, size), bool)
    person_masks = np.zeros((count, size, size), np.float32)
    landmarks = np.zeros((count, 5, 2), np.float32)
    for i, sample in enumerate(samples):
        left, width = edges[i], edges[i + 1] - edges[i]
        face_x = float(sample["landmarks"][:, 0].mean())
        start = int(np.clip(round(face_x - width / 2), 0, size - width))
        columns = slice(start, start + width)
        image[:, left:left + width] = sample["image"][:, columns]
        face_mask[:, left:left + width] = sample["face_mask"][:, columns]
        person_masks[i, :, left:left + width] = sample["person_mask"][:, columns]
        landmarks[i] = sample["landmarks"] + np.array([left - start, 0.0], np.float32)
    return {"image": image, "face_mask": face_mask, "person_masks": person_masks, "landmarks": landmarks}


class StreamSampler(Sampler):
    """Positions `start, start + 1, ...` of the example stream, split between processes.

    Process `rank` of `world` takes the positions `p` with `p % world == rank`, so together the processes
    see each position once, and a run resumed at micro-batch m starts exactly where it stopped.
    """

    def __init__(self, start: int, total: int, rank: int = 0, world: int = 1):
        self.start, self.total, self.rank, self.world = start, total, rank, world

    def __iter__(self):
        for i in range(self.start, self.total):
            yield i * self.world + self.rank

    def __len__(self) -> int:
        return max(0, self.total - self.start)
