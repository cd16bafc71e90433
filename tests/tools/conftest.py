"""Converted real models for the tool tests (made once, cached: see model_cache.py)."""

from model_cache import smollm2_hf  # noqa: F401
