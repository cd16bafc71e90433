"""Tests of llm_router.engines (a package so its conftest has a unique module name)."""
