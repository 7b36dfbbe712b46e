"""Training the guidance module by masked-face reconstruction (FaceStudio, arXiv 2312.02663, sec. 3.5).

* `prepare`: a folder of human photos -> a resumable, versioned cache of faces, crops, embeddings, masks
  and captions, plus a report of the photos that cannot be used and why.
* `dataset`: training examples from the cache: the photo as target, the photo with its face masked as the
  style condition, the aligned face as identity; random condition dropping; multi-identity composites.
* `modules`: the trainable parts (identity and style projections, the IP key/value layers) and the
  batched tokens and masks the UNet takes.
* `losses`: the diffusion loss and the optional identity loss on the predicted clean image.
* `trainer`: the accelerate loop: checkpoints, exact resume, loss curve, sample grids.
"""
