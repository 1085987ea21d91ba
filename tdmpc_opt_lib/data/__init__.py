"""Offline datasets: our memory-mapped format (:mod:`.storage`), a window sampler (:mod:`.sampler`),
the public TD-MPC2 chunks (:mod:`.public`) and random datasets for tests (:mod:`.synthetic`)."""
from .public import UntrustedFileError, convert_public, export_public, read_public_chunk
from .sampler import WindowSampler
from .storage import Dataset, DatasetError, DatasetWriter, EpisodeBuffer, episode_table, merge, mmap_advice, save
from .synthetic import make_synthetic

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "EpisodeBuffer", "UntrustedFileError", "WindowSampler",
           "convert_public", "episode_table", "export_public", "make_synthetic", "merge", "mmap_advice",
           "read_public_chunk", "save"]
