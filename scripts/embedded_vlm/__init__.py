"""Synthetic image data and the alignment pretraining for tunechain's embedded vision-language model."""
from .draw import COLOURS, OBJECTS, POSITIONS, SHAPES, Scene, SceneSampler, content_hash, render  # noqa: F401
from .sets import Sizes, build, caption, check_no_leak, write  # noqa: F401

SEED = 1234
