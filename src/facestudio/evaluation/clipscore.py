"""Prompt alignment: CLIP text-image score, `100 * max(cos(text, image), 0)` (the CLIPScore of Hessel et
al. 2021 without its 2.5 weight, as torchmetrics reports it). Scores depend on the CLIP model: the report
names it, and scores of different models are not compared.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import ModelFileError, first_line

logger = logging.getLogger(__name__)


class ClipScorer:
    """A CLIP model and its processor, from a local folder or a model hub id.

    Raises:
        ModelFileError: the model cannot be loaded (missing folder, no network, not a CLIP model).
    """

    def __init__(self, model: str | Path, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.name = str(model)
        local = Path(str(model)).expanduser()
        if (str(model).startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
            raise ModelFileError(f"CLIP model {model}: no such folder")
        try:
            self.model = CLIPModel.from_pretrained(str(local) if local.is_dir() else str(model)).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(str(local) if local.is_dir() else str(model))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"CLIP model {model}: could not be loaded ({first_line(e)})") from None
        self.device = device

    @torch.no_grad()
    def score(self, images, prompts: list[str]) -> list[float]:
        """One score per (image, prompt) pair."""
        inputs = self.processor(text=prompts, images=list(images), return_tensors="pt", padding="max_length",
                                truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        text = self.model.get_text_features(input_ids=inputs["input_ids"],
                                            attention_mask=inputs.get("attention_mask"))
        image, text = (_tensor(x) for x in (image, text))
        cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return [float(100 * max(c, 0.0)) for c in cos.tolist()]


def _tensor(features):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(features, torch.Tensor):
        return features
    return getattr(features, "pooler_output", None) if getattr(features, "pooler_output", None) is not None \
        else features[0]
