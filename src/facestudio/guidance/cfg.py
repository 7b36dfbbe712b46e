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

Written as weights of the rows, ``eps = (1 - g_text) eps_uncond + (g_text - g_ref) eps_text + g_ref eps_full``,
a row whose weight is 0 need not be computed: a text scale of 1 needs no ``uncond`` row, ``g_ref = g_text`` no
``text`` row, ``g_ref = 0`` no ``full`` row (`GuidanceRows.for_scales`); a few-step model at scale 1 costs one
UNet evaluation per step.

FlashFace (sec. 3.3 and its sampler) guides by the reference only from a timestep on (t <= 600 by default):
at the noisier steps before, it runs ordinary text guidance with the reference in both rows,
``eps = eps_uncond_ref + g_text (eps_full - eps_uncond_ref)``, ``uncond_ref`` being the negative prompt with the
references (`GuidancePlan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Order of the three conditions in the batch.
CONDITIONS = ("uncond", "text", "full")
#: The negative prompt with the references: FlashFace's unconditional row before reference guidance starts.
UNCOND_REF = "uncond_ref"
#: Every condition a call may stack, in stacking order.
ALL_CONDITIONS = (*CONDITIONS, UNCOND_REF)
#: Ordinary classifier-free guidance, diffusers' `[negative; positive]`: (negative prompt, "no reference") against
#: (prompt, the references). The pipeline uses it when no reference is given; then both rows are "no reference".
TWO_WAY = ("uncond", "full")


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

    `for_call`: with a reference (identities or a style image) the rows are `CONDITIONS` (three-way guidance
    above); without, ordinary guidance's `TWO_WAY`. `for_scales`: only the rows the scales give a weight.
    The pipeline and the benchmarks stack text, reference tokens and latents through these methods, so the
    rows are decided here only.
    """

    conditions: tuple[str, ...]

    @classmethod
    def for_call(cls, references: bool) -> GuidanceRows:
        return cls(CONDITIONS if references else TWO_WAY)

    @classmethod
    def for_scales(cls, references: bool, text_scale: float, reference_scale: float) -> GuidanceRows:
        """The fewest rows that give the same prediction as `for_call(references)` at these scales."""
        if not references:  # "text" and "full" are one condition: the prompt with no reference
            return cls(TWO_WAY if text_scale != 1 else ("full",))
        weights = {"uncond": 1 - text_scale, "text": text_scale - reference_scale, "full": reference_scale}
        return cls(tuple(c for c in CONDITIONS if weights[c] != 0))

    @classmethod
    def before_reference(cls, text_scale: float) -> GuidanceRows:
        """FlashFace's rows before reference guidance starts: text guidance with the references in both rows."""
        return cls((UNCOND_REF, "full") if text_scale != 1 else ("full",))

    def take(self, stacked: torch.Tensor, rows: GuidanceRows) -> torch.Tensor:
        """The blocks of `rows` from a tensor stacked along dim 0 as these rows (each block of equal size)."""
        if rows.conditions == self.conditions:
            return stacked
        blocks = stacked.chunk(len(self))
        return torch.cat([blocks[self.conditions.index(c)] for c in rows.conditions])

    def __len__(self) -> int:
        return len(self.conditions)

    def text(self, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """The text input of each row stacked along dim 0: the negative prompt for the unconditional rows, else
        the prompt."""
        return torch.cat([negative if c in ("uncond", UNCOND_REF) else positive for c in self.conditions])

    def references(self, null: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        """The reference input of each row: the real references in "full" (and "uncond_ref"), else the
        "no reference" input."""
        return [real if c in ("full", UNCOND_REF) else null for c in self.conditions]

    def latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents once per row."""
        return torch.cat([latents] * len(self))

    def combine(self, eps: torch.Tensor, text_scale: float, reference_scale: float) -> torch.Tensor:
        """The rows' predictions combined into one (`reference_scale` unused without a reference)."""
        if self.conditions == CONDITIONS:
            return combine_guidance(eps, text_scale, reference_scale)
        if len(self) == 1:  # the other rows' weights are 0
            return eps
        if self.conditions == ("text", "full"):  # text scale 1: text + g_ref (full - text)
            return combine_two_way(eps, reference_scale)
        return combine_two_way(eps, text_scale)  # (uncond, full), (uncond, text), (uncond_ref, full)


@dataclass(frozen=True)
class GuidancePlan:
    """The rows of every step of one call: `rows`, and with FlashFace's start, `early` above it.

    Attributes:
        rows (`GuidanceRows`): the rows of the steps with reference guidance (every step without a start).
        early (`GuidanceRows`, *optional*): the rows of the steps at timesteps above `reference_start`.
        reference_start (`float`, *optional*): reference guidance acts at timesteps t <= this.
    """

    rows: GuidanceRows
    early: GuidanceRows | None = None
    reference_start: float | None = None

    @classmethod
    def for_call(cls, references: bool, text_scale: float, reference_scale: float,
                 reference_start: float | None = None) -> GuidancePlan:
        rows = GuidanceRows.for_scales(references, text_scale, reference_scale)
        if not references or reference_start is None:
            return cls(rows)
        return cls(rows, GuidanceRows.before_reference(text_scale), reference_start)

    @property
    def stacked(self) -> GuidanceRows:
        """Every row some step needs, in `ALL_CONDITIONS` order: what the call's inputs are stacked as."""
        used = set(self.rows.conditions) | set(self.early.conditions if self.early else ())
        return GuidanceRows(tuple(c for c in ALL_CONDITIONS if c in used))

    def at(self, timestep) -> GuidanceRows:
        """The rows of the step at `timestep`."""
        if self.early is not None and float(timestep) > self.reference_start:
            return self.early
        return self.rows
