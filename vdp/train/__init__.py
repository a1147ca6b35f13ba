"""From our shards to training tensors, with no loader framework: the pieces vdp.energon's task
encoders are made of, usable as they are from a plain webdataset or wids pipeline.

members: a shard sample's raw members (json, npy, JPEG bytes) -> fields (ids, images, frames…).
batches: fields -> labels, position ids, cu_seqlens, image positions, images scaled to a square.
Needs torch (any trainer has it); the base install of the pipeline does not.
"""
