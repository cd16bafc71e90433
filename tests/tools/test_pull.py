"""How `pull` reads its SOURCE and picks a file of a Hub repository."""

from __future__ import annotations

import pytest

from llm_router.tools.pull import HubSource, PullError, hub_file, parse_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://example.com/m/model.gguf", "https://example.com/m/model.gguf"),
        ("http://127.0.0.1:8000/model.gguf", "http://127.0.0.1:8000/model.gguf"),
        ("org/repo:Q4_K_M", HubSource("org/repo", None, "Q4_K_M")),
        ("hf.co/org/repo:q8_0", HubSource("org/repo", None, "q8_0")),
        ("hf://org/repo/sub/model.gguf", HubSource("org/repo", "sub/model.gguf")),
        ("org/repo@v1.0/model.gguf", HubSource("org/repo", "model.gguf", None, "v1.0")),
        ("org/Repo-GGUF", HubSource("org/Repo-GGUF")),
        (
            "https://huggingface.co/org/repo/resolve/main/model-Q4_K_M.gguf",
            HubSource("org/repo", "model-Q4_K_M.gguf", None, "main"),
        ),
    ],
)
def test_sources(text: str, expected: str | HubSource) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["model.gguf", "just-a-name", "org/repo:Q4 K", "/abs/path"])
def test_what_is_neither_a_url_nor_a_hub_name_is_refused(text: str) -> None:
    with pytest.raises(PullError, match="neither a URL nor a Hub reference"):
        parse_source(text)


FILES = ["README.md", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "m-IQ4_XS.gguf"]


def test_a_quantization_picks_its_one_file() -> None:
    assert hub_file(HubSource("o/r", quant="Q4_K_M"), FILES) == "m-Q4_K_M.gguf"
    assert hub_file(HubSource("o/r", quant="q8_0"), FILES) == "m-Q8_0.gguf"
    # Q4_K is not Q4_K_M's prefix match: names are compared part by part
    with pytest.raises(PullError, match=r"no \.gguf of Q4_K;.*m-Q4_K_M\.gguf"):
        hub_file(HubSource("o/r", quant="Q4_K"), FILES)


def test_without_file_or_quantization_only_a_lone_gguf_is_picked() -> None:
    assert hub_file(HubSource("o/r"), ["README.md", "only.gguf"]) == "only.gguf"
    with pytest.raises(PullError, match="name one file"):
        hub_file(HubSource("o/r"), FILES)
    with pytest.raises(PullError, match=r"no file 'x\.gguf'"):
        hub_file(HubSource("o/r", "x.gguf"), FILES)
