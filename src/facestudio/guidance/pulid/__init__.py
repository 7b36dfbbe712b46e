"""PuLID (Guo et al. 2024, arXiv 2404.16022): its ID attention inside the SDXL UNet (`attention.py`) and its ID
encoder (`encoder.py`); the kind that ties them to the pipeline is `guidance/kinds/pulid.py`."""
