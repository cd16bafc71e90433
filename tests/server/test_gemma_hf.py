"""Gemma 3, a second architecture through transformers: the bundled Gemma 3 270M GGUF (base,
Q4_K_M, no chat template) beside its HF conversion by `convert` (bfloat16), in one real
server, through the `openai` client.

Both get their chat template by the same rule (`template_for`): the GGUF carries no
`general.finetune`, nor does the folder convert made from it, so both chat as a base model,
through the plain transcript, and answer alike.

The bound on greedy completions, measured: the folder holds the Q4_K_M weights dequantized
exactly, but llama.cpp multiplies them with 8-bit activations, so the two part where the top
logits nearly tie. Over PROMPTS at 16 tokens they part at tokens 2, 2 and 4 on three prompts
and not at all on four (the first at 11); each time llama.cpp's token was transformers'
second or third choice, within 0.17 logit of its first (float32 parts at the same places,
within the same margins: bfloat16 costs no agreement and decodes twice as fast)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from engine_driver import common_tokens
from llm_router.engines.chat_template import GEMMA_TEMPLATE, TRANSCRIPT_TEMPLATE, template_for
from llm_router.formats.detect import describe
from llm_router.formats.gguf import read_gguf_info
from model_cache import gemma_hf  # noqa: F401  (fixture)
from servers import GEMMA, MakeClient, Server, chat_both_ways, link_models, new_server

pytestmark = pytest.mark.real

HF = "gemma-hf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "My favourite food is",
    "The largest planet in the solar system is",
    "1, 2, 3, 4, 5,",
]
TOKENS = 8


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory,
    gemma_gguf: Path,
    gemma_hf: Path,  # noqa: F811
) -> Iterator[Server]:
    models = link_models(tmp_path_factory.mktemp("gemma-models"), gemma_gguf)
    (models / HF).symlink_to(gemma_hf)
    server = new_server(
        tmp_path_factory.mktemp("gemma-server"),
        models_dir=str(models),
        models_max=2,
        model_defaults={"threads": 2},
    )
    yield server
    server.stop()


@pytest.fixture
def oai(srv: Server, make_client: MakeClient) -> openai.OpenAI:
    return make_client(srv)


def test_converted_gemma_keeps_the_gguf_metadata(gemma_hf: Path, gemma_gguf: Path) -> None:  # noqa: F811
    found, meta = describe(gemma_hf) or pytest.fail("not detected")
    gguf = read_gguf_info(gemma_gguf)
    assert (found.format, found.engine, found.task) == ("hf", "transformers", "generate")
    assert (meta.architecture, meta.context_length) == ("gemma3", gguf.context_length)
    assert meta.parameters == gguf.parameters and meta.quantization == "BF16"
    assert meta.chat_template is None and meta.finetune is gguf.finetune is None
    chosen = template_for(meta.architecture, meta.chat_template, None, meta.finetune)
    assert chosen == template_for(gguf.architecture, gguf.chat_template, None, gguf.finetune)
    assert chosen is not None and chosen[0] == TRANSCRIPT_TEMPLATE


def test_an_instruct_folder_gets_gemma_turns(gemma_hf: Path, tmp_path: Path) -> None:  # noqa: F811
    """What `convert` writes for a GGUF whose `general.finetune` says instruct (SmolLM2's
    is carried so, see tests/engines/test_hf.py): `finetune` in config.json."""
    folder = tmp_path / "gemma-it"
    folder.mkdir()
    for item in gemma_hf.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((gemma_hf / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "finetune": "it"}))
    _, meta = describe(folder) or pytest.fail("not detected")
    assert meta.finetune == "it"
    chosen = template_for(meta.architecture, meta.chat_template, None, meta.finetune)
    assert chosen == (GEMMA_TEMPLATE, ())


def test_listed_as_transformers_beside_the_gguf(srv: Server) -> None:
    models = srv.models()
    hf, gguf = models[HF], models[GEMMA]
    assert (hf["format"], hf["engine"], gguf["engine"]) == ("hf", "transformers", "llama.cpp")
    assert hf["status"]["value"] != "error", hf["status"]
    assert hf["model_architecture"] == gguf["model_architecture"] == "gemma3"
    assert hf["parameters"] == gguf["parameters"]


def test_chat_answers_paris_as_the_gguf_does(oai: openai.OpenAI) -> None:
    answers, usages = {}, {}
    for model in (GEMMA, HF):
        answers[model], usages[model] = chat_both_ways(oai, model, QUESTION, 20)
    assert set(answers.values()) == {"The capital of France is Paris."}, answers
    assert usages[GEMMA] == usages[HF], usages  # same transcript, same tokens, same stop


def test_greedy_completions_agree_with_llama_cpp(oai: openai.OpenAI, gemma_hf: Path) -> None:  # noqa: F811
    texts: dict[str, list[str]] = {}
    for model in (GEMMA, HF):
        texts[model] = []
        for prompt in PROMPTS:
            done = oai.completions.create(
                model=model, prompt=prompt, temperature=0, max_tokens=TOKENS
            )
            assert done.usage is not None and done.usage.completion_tokens == TOKENS
            texts[model].append(done.choices[0].text)
    tokenizer = AutoTokenizer.from_pretrained(str(gemma_hf), local_files_only=True)
    agree = [common_tokens(tokenizer, a, b) for a, b in zip(texts[HF], texts[GEMMA], strict=True)]
    assert min(agree) >= 2, (agree, texts)
    assert sum(n >= TOKENS for n in agree) >= 4, (agree, texts)
    streamed = oai.completions.create(
        model=HF, prompt=PROMPTS[0], temperature=0, max_tokens=TOKENS, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == texts[HF][0]
