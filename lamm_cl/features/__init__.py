"""Frozen image features, computed once and shared by every frozen-encoder strategy, seed and run.

* :mod:`~lamm_cl.features.extractor` -- :class:`FeatureExtractor` (features of whole sample sets),
  its image readers and store keys;
* :mod:`~lamm_cl.features.store` -- :class:`FeatureStore`, the checked on-disk store;
* :mod:`~lamm_cl.features.views` -- augmented training views and the per-epoch view schedule;
* :mod:`~lamm_cl.features.precision` -- CUDA autocast and the encoder's batch size.
"""
from lamm_cl.features.extractor import DTYPES, STORE_FORMAT, FeatureExtractor, ImageReader, transform_identity
from lamm_cl.features.precision import AutocastPlugin, autocast, extraction_batch_size
from lamm_cl.features.store import FeatureStore, default_cache_dir, entry_bytes
from lamm_cl.features.views import AugmentedView, TrainViewPlugin, ViewReader, ViewSchedule, draw_view, view_seed

__all__ = ["DTYPES", "STORE_FORMAT", "FeatureExtractor", "ImageReader", "transform_identity", "AutocastPlugin",
           "autocast", "extraction_batch_size", "FeatureStore", "default_cache_dir", "entry_bytes", "AugmentedView",
           "TrainViewPlugin", "ViewReader", "ViewSchedule", "draw_view", "view_seed"]
