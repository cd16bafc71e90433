"""Tests of llm_router.tools (a package so its conftest has a unique module name)."""
