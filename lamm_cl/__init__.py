"""lamm-cl: continual-learning benchmarks for CLIP, centred on LAMM label alignment."""
__version__ = "0.1.0"
