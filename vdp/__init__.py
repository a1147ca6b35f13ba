"""Shared machinery of the video data pipeline: planning, decoding, tar writing, errors, progress."""
