"""Classifier-free guidance with separate text and reference strengths (FlashFace, Zhang et al. 2024, sec. 3.3).

The UNet is run once on a batch of three conditions, stacked in this order:

* ``uncond``: negative prompt, "no reference" identity input;
* ``text``: prompt, "no reference" identity input;
* ``full``: prompt and the reference identities.

and the three predictions are combined as

    eps = eps_uncond + g_text * (eps_text - eps_uncond) + g_ref * (eps_full - eps_text)

With ``g_ref = 0`` this is ordinary text guidance; with ``g_ref = g_text`` it is ordinary guidance of
(prompt + reference) against (negative prompt + no reference). A prompt that contradicts the photo ("as a
child") wins where ``g_text`` is raised against ``g_ref``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Order of the three conditions in the batch.
CONDITIONS = ("uncond", "text", "full")
#: Ordinary classifier-free guidance, diffusers' `[negative; positive]`: (negative prompt, "no reference") against
#: (prompt, the references). The pipeline uses it when no reference is given; then both rows are "no reference".
TWO_WAY = ("uncond", "full")
#: No classifier-free guidance: one prediction (prompt, the references). A guidance-distilled model (FLUX.1-dev,
#: schnell) takes its guidance as an input instead; scales of 1 ask for this.
ONE_ROW = ("full",)


def combine_guidance(eps: torch.Tensor, text_scale: float, reference_scale: float) -> torch.Tensor:
    """Combine the three stacked predictions into one.

    Args:
        eps (`torch.Tensor`): `[3 * B, ...]`, the predictions for `CONDITIONS` stacked along dim 0.
        text_scale (`float`): `g_text`.
        reference_scale (`float`): `g_ref`.

    Returns:
        `torch.Tensor` of shape `[B, ...]`.
    """
    if eps.shape[0] % 3:
        raise ValueError(f"expected a batch of 3 * B predictions, got {eps.shape[0]}")
    uncond, text, full = eps.chunk(3)
    return uncond + text_scale * (text - uncond) + reference_scale * (full - text)


def combine_two_way(eps: torch.Tensor, scale: float) -> torch.Tensor:
    """Ordinary classifier-free guidance of a `[2 * B, ...]` batch stacked as (uncond, cond)."""
    if eps.shape[0] % 2:
        raise ValueError(f"expected a batch of 2 * B predictions, got {eps.shape[0]}")
    uncond, cond = eps.chunk(2)
    return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class GuidanceRows:
    """The predictions of one denoising step: which conditions, in what order, and how they combine.

    With a reference (identities or a style image) the rows are `CONDITIONS` (three-way guidance above);
    without, ordinary guidance's `TWO_WAY`. The pipeline and the benchmarks stack text, reference
    tokens and latents through these methods, so the rows are decided here only.
    """

    conditions: tuple[str, ...]

    @classmethod
    def for_call(cls, references: bool) -> GuidanceRows:
        return cls(CONDITIONS if references else TWO_WAY)

    def __len__(self) -> int:
        return len(self.conditions)

    def text(self, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """The text input of each row stacked along dim 0: the negative prompt for "uncond", else the prompt."""
        return torch.cat([negative if c == "uncond" else positive for c in self.conditions])

    def references(self, null: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        """The reference input of each row: the real references only in "full", else the "no reference" input."""
        return [real if c == "full" else null for c in self.conditions]

    def latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents once per row."""
        return torch.cat([latents] * len(self))

    def combine(self, eps: torch.Tensor, text_scale: float, reference_scale: float) -> torch.Tensor:
        """The rows' predictions combined into one (`reference_scale` unused without a reference)."""
        if self.conditions == ONE_ROW:
            return eps
        if self.conditions == CONDITIONS:
            return combine_guidance(eps, text_scale, reference_scale)
        return combine_two_way(eps, text_scale)
