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

import torch

#: Order of the three conditions in the batch.
CONDITIONS = ("uncond", "text", "full")


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
