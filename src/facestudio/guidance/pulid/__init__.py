"""PuLID (Guo et al. 2024, arXiv 2404.16022): its ID encoder and its ID attention.

The encoder half (`encoder.py`, the entry point) turns face photos into ID tokens: the antelopev2 ArcFace
embedding (`antelope.py`) and EVA02-CLIP-L-14-336 (`eva.py`, plain torch) on the parsed, background-whitened,
grey face (`parsing.py`), read by the ID former (`idformer.py`) whose checkpoint keys `checkpoints.py` checks.
The UNet half (`attention.py`) is the ID attention in every cross-attention layer, each person gated by their
region; the kind that joins the two for the pipeline is `guidance/kinds/pulid.py`.
Nothing heavy is imported here, so `facestudio.guidance.pulid.<module>` costs only what that module needs.
"""
