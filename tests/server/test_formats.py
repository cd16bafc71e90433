"""Every format from ONE models directory in one real server, through the `openai` client.

SmolLM2 three ways: the bundled GGUF (llama.cpp), its HF safetensors conversion (transformers)
and the fp32 ONNX build of that (onnxruntime-genai), all made by the project's own `convert`.
The same greedy chat gives the same answer in all three. The bound, measured: the HF folder
holds the Q4_1 weights dequantized exactly and the fp32 ONNX build is token-for-token equal to
transformers; llama.cpp's 8-bit activations can flip a near-tied pair of logits (see
tests/engines/test_hf.py), which does not happen on this question, so the answer and the usage
are asserted identical, streaming and not.

all-MiniLM-L6-v2 three ways for embeddings: the ONNX folder `defaults.place_minilm` builds
(onnxruntime), the sentence-transformers folder itself (transformers) and a GGUF written from
it (llama.cpp). Beside them, broken models: each is an `error` entry with its reason, and the
rest keep serving."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from bert_gguf import write_bert_gguf
from llm_router import defaults
from model_cache import minilm_folder, smollm2_hf, smollm2_onnx_fp32  # noqa: F401  (fixtures)
from openai_schema import validate
from servers import SMOL, MakeClient, Server, chat_both_ways, link_models, new_server
from tiny_models import tiny_llama

pytestmark = pytest.mark.real

MINILM = defaults.MINILM_ID
SMOLS = [SMOL, "smol-hf", "smol-onnx"]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
    "How do I bake sourdough bread?",
]
BROKEN = {  # id -> what its error says
    "corrupt": "corrupt safetensors header",
    "not-a-model": "not an ONNX model",
    "no-weights": "config.json but no weights",
}


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _matryoshka_copy(source: Path, folder: Path) -> Path:
    """`source`'s files linked into `folder`, with a model card that declares Matryoshka
    training (the model is not really trained so: this checks the plumbing, not the quality)."""
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "README.md":
            (folder / item.name).symlink_to(item.resolve())
    (folder / "README.md").write_text("---\ntags:\n- sentence-transformers\n- matryoshka\n---\n")
    return folder


@pytest.fixture(scope="module")
def formats_dir(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_gguf: Path,
    smollm2_hf: Path,  # noqa: F811
    smollm2_onnx_fp32: Path,  # noqa: F811
) -> Path:
    models = link_models(tmp_path_factory.mktemp("formats"), smollm2_gguf)
    (models / "smol-hf").symlink_to(smollm2_hf)
    (models / "smol-onnx").symlink_to(smollm2_onnx_fp32)
    onnx_minilm = defaults.place_minilm(models)
    assert onnx_minilm is not None and (onnx_minilm / "model.onnx").is_file()
    (models / "minilm-hf").symlink_to(minilm_folder())
    write_bert_gguf(minilm_folder(), models / "minilm.gguf")
    _matryoshka_copy(onnx_minilm, models / "minilm-matryoshka")
    (models / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!")
    (models / "not-a-model.onnx").write_text("just some text\n")
    (models / "no-weights").mkdir()
    (models / "no-weights" / "config.json").write_text('{"model_type": "llama"}')
    tiny_llama(models / "pickled", smollm2_hf, "pickle")
    tiny_llama(models / "pickled-allowed", smollm2_hf, "pickle")
    return models


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, formats_dir: Path) -> Iterator[Server]:
    server = new_server(
        tmp_path_factory.mktemp("formats-server"),
        models_dir=str(formats_dir),
        models_max=0,
        models=[{"id": "pickled-allowed", "allow_pickle": True}],
        model_defaults={"threads": 2},
    )
    yield server
    server.stop()


@pytest.fixture
def oai(srv: Server, make_client: MakeClient) -> openai.OpenAI:
    return make_client(srv)


def _embed(client: openai.OpenAI, model: str, **kwargs: Any) -> list[list[float]]:
    return [
        d.embedding for d in client.embeddings.create(model=model, input=SENTENCES, **kwargs).data
    ]


# -- discovery ------------------------------------------------------------------------------


def test_every_format_is_listed_with_its_metadata(srv: Server) -> None:
    models = srv.models()
    expected = {
        SMOL: ("gguf", "llama.cpp", "generate"),
        "smol-hf": ("hf", "transformers", "generate"),
        "smol-onnx": ("onnx-genai", "onnxruntime-genai", "generate"),
        MINILM: ("onnx", "onnxruntime", "embed"),
        "minilm-hf": ("hf", "transformers", "embed"),
        "minilm": ("gguf", "llama.cpp", "embed"),
    }
    for model, (fmt, engine, task) in expected.items():
        entry = models[model]
        assert (entry["format"], entry["engine"], entry["task"]) == (fmt, engine, task), model
        assert entry["status"]["value"] != "error", entry["status"]
        assert entry["model_architecture"] in ("llama", "bert")
        assert entry["parameters"] > 20_000_000 and entry["size_bytes"] > 20 * 2**20
    assert models["smol-hf"]["parameters"] == models[SMOL]["parameters"]
    assert models["smol-hf"]["context_length"] == models[SMOL]["context_length"] == 8192
    assert (models[SMOL]["quantization"], models["smol-hf"]["quantization"]) == ("Q4_1", "F32")
    for model in (MINILM, "minilm-hf", "minilm"):
        assert models[model]["dimensions"] == 384
        assert models[model]["architecture"]["output_modalities"] == ["embedding"]
    assert models[MINILM]["context_length"] == models["minilm-hf"]["context_length"] == 256


def test_broken_models_are_errors_with_the_reason(srv: Server, oai: openai.OpenAI) -> None:
    models = srv.models()
    for model, reason in BROKEN.items():
        status = models[model]["status"]
        assert status["value"] == "error" and status["failed"] is True, model
        assert reason in status["error"], status
        with pytest.raises(openai.InternalServerError) as err:
            oai.completions.create(model=model, prompt="Hi", max_tokens=2)
        assert err.value.code == "model_load_failed" and reason in err.value.message
        # the same answer until the file changes: the client asked twice more, for nothing
        assert err.value.response.headers["x-should-retry"] == "false"
    answer = oai.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=30
    )
    assert "Paris" in (answer.choices[0].message.content or "")


# -- one model, three formats ---------------------------------------------------------------


def test_same_greedy_chat_in_every_format(oai: openai.OpenAI) -> None:
    answers, usages = {}, {}
    for model in SMOLS:
        answers[model], usages[model] = chat_both_ways(oai, model, QUESTION, 30)
    assert set(answers.values()) == {"The capital of France is Paris."}, answers
    assert len(set(usages.values())) == 1, usages


def test_penalties_count_the_prompt_in_every_format(oai: openai.OpenAI) -> None:
    """The penalties look at the prompt's last tokens, then the answer's, as llama.cpp's
    chain is fed them (llama-server does so): greedy with a strong repeat penalty gives one
    text in every format, and another than without the penalty, from its first word (the
    prompt's "." is the likeliest next token, and penalized)."""
    prompt = "Write the word cat. cat cat cat cat"
    texts = {
        (m, penalty): oai.completions.create(
            model=m,
            prompt=prompt,
            temperature=0,
            max_tokens=12,
            extra_body={"repeat_penalty": penalty, "repeat_last_n": 16},
        )
        .choices[0]
        .text
        for m in SMOLS
        for penalty in (1.0, 1.8)
    }
    plain = {texts[m, 1.0] for m in SMOLS}
    penalized = {texts[m, 1.8] for m in SMOLS}
    assert len(plain) == 1 and len(penalized) == 1, texts
    assert plain != penalized, texts


def test_llama_cpps_own_samplers_are_refused_by_the_other_engines(oai: openai.OpenAI) -> None:
    """`mirostat`, `typical_p`, `dry_*`... are llama.cpp's: the GGUF samples with them, the
    other engines answer a 400 naming the field rather than sample otherwise."""
    for field, value in (("mirostat", 2), ("typical_p", 0.5), ("dry_multiplier", 0.8)):
        done = oai.completions.create(
            model=SMOL, prompt="Once", max_tokens=4, seed=1, extra_body={field: value}
        )
        assert done.choices[0].text
        for model in SMOLS[1:]:
            with pytest.raises(openai.BadRequestError) as info:
                oai.completions.create(
                    model=model, prompt="Once", max_tokens=4, seed=1, extra_body={field: value}
                )
            error = info.value.body
            assert isinstance(error, dict) and error["param"] == field, error
            assert "llama.cpp" in error["message"], error


def test_plain_completion_in_every_format(oai: openai.OpenAI) -> None:
    texts = {
        m: oai.completions.create(
            model=m, prompt="The capital of France is", temperature=0, max_tokens=6
        )
        .choices[0]
        .text
        for m in SMOLS
    }
    assert all(t.startswith(" Paris") for t in texts.values()), texts


def test_structured_output_and_tool_calls_in_every_format(oai: openai.OpenAI) -> None:
    """Each engine (llama.cpp, transformers, onnxruntime-genai) constrains its answers: a
    schema holds streaming and not, and a required tool call comes back valid."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 50_000_000},
            "tags": {"type": "array", "items": {"enum": ["big", "old", "coastal"]}, "maxItems": 2},
        },
        "required": ["city", "population", "tags"],
        "additionalProperties": False,
    }
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "c", "schema": schema, "strict": True},
    }
    tool: Any = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "maxLength": 30}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    }
    for model in SMOLS:
        for stream in (False, True):
            body: dict[str, Any] = {
                "model": model,
                "messages": QUESTION,
                "temperature": 0,
                "max_tokens": 100,
                "response_format": fmt,
            }
            if stream:
                chunks = oai.chat.completions.create(**body, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = oai.chat.completions.create(**body).choices[0].message.content or ""
            jsonschema.validate(json.loads(text), schema)
        done = oai.chat.completions.create(
            model=model,
            messages=QUESTION,
            tools=[tool],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=100,
        )
        (call,) = done.choices[0].message.tool_calls or []
        assert call.function.name == "lookup" and done.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tools_or_a_schema_on_an_embedding_model_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=MINILM,
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert "embeddings" in info.value.message or "generates" in info.value.message


# -- embeddings -----------------------------------------------------------------------------


def test_three_engines_agree(oai: openai.OpenAI) -> None:
    onnx, torch, gguf = (_embed(oai, m) for m in (MINILM, "minilm-hf", "minilm"))
    for other in (torch, gguf):
        assert min(_cos(a, b) for a, b in zip(onnx, other, strict=True)) > 0.99
    for v in (onnx, torch, gguf):
        assert all(len(x) == 384 and abs(math.hypot(*x) - 1) < 1e-4 for x in v)
        cats, revenue = _cos(v[0], v[1]), _cos(v[2], v[3])
        unrelated = max(_cos(v[0], v[2]), _cos(v[1], v[4]), _cos(v[3], v[4]))
        assert unrelated < min(cats, revenue) - 0.3


def test_response_matches_openai_schema(srv: Server) -> None:
    body = {"model": MINILM, "input": SENTENCES[:2], "encoding_format": "float"}
    r = httpx.post(srv.url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    validate("CreateEmbeddingResponse", data)
    assert [d["index"] for d in data["data"]] == [0, 1] and data["model"] == MINILM
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 4
    assert r.headers["x-llm-router-model"] == MINILM


def test_base64_decodes_to_the_same_floats(srv: Server, oai: openai.OpenAI) -> None:
    def post(fmt: str) -> list[Any]:
        body = {"model": "minilm-hf", "input": SENTENCES, "encoding_format": fmt}
        r = httpx.post(srv.url + "/v1/embeddings", json=body, timeout=60)
        return [d["embedding"] for d in r.json()["data"]]

    floats, packed = post("float"), post("base64")
    for f, b in zip(floats, packed, strict=True):
        decoded = np.frombuffer(base64.b64decode(b), dtype="<f4")
        assert np.array_equal(decoded, np.array(f, dtype=np.float32))
    # The openai client asks for base64 by default and decodes it itself.
    assert np.array_equal(
        np.array(_embed(oai, "minilm-hf"), dtype=np.float32), np.array(floats, dtype=np.float32)
    )


def test_token_arrays_embed_like_their_text(oai: openai.OpenAI) -> None:
    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.no_padding()
    ids = [tokenizer.encode(s).ids for s in SENTENCES[:2]]
    for model in (MINILM, "minilm-hf", "minilm"):
        from_text = oai.embeddings.create(model=model, input=SENTENCES[:2])
        from_ids = oai.embeddings.create(model=model, input=ids)
        one = oai.embeddings.create(model=model, input=ids[0])
        assert from_ids.usage.prompt_tokens == sum(len(i) for i in ids), model
        assert one.usage.prompt_tokens == len(ids[0])
        for a, b in zip(from_text.data, from_ids.data, strict=True):
            assert _cos(a.embedding, b.embedding) > 0.9999, model
        assert _cos(one.data[0].embedding, from_text.data[0].embedding) > 0.9999
        # ids of OpenAI's tokenizer (cl100k: LangChain's OpenAIEmbeddings sends them by
        # default): the 400 says whose ids these must be, and how to make LangChain send text
        with pytest.raises(openai.BadRequestError) as err:
            oai.embeddings.create(model=model, input=[[791, 9282, 374, 6555, 40000]])
        assert err.value.param == "input", model
        assert "check_embedding_ctx_length=False" in err.value.message, model


def test_embeddings_take_keep_alive_and_autoload_as_chats_do(srv: Server) -> None:
    """Ollama's clients send `keep_alive` on embed calls too; it was ignored here, an
    invalid one included, and `?autoload=false` as well (found from outside)."""
    url = srv.url + "/v1/embeddings"
    body = {"model": MINILM, "input": ["a cat"]}
    bad = httpx.post(url, json={**body, "keep_alive": "abc"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
    assert httpx.post(url, json={**body, "keep_alive": 0}, timeout=120).status_code == 200
    srv.wait_status(MINILM, "unloaded", timeout=30)  # unloaded once it was answered
    refused = httpx.post(url + "?autoload=false", json=body, timeout=60)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "model_not_loaded"
    assert srv.models()[MINILM]["status"]["value"] == "unloaded"


def test_dimensions_only_where_the_model_allows(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=MINILM, input="hello", dimensions=128)
    assert err.value.param == "dimensions" and "Matryoshka" in err.value.message
    same = oai.embeddings.create(model=MINILM, input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384
    full = _embed(oai, "minilm-matryoshka")
    short = _embed(oai, "minilm-matryoshka", dimensions=128)
    for f, s in zip(full, short, strict=True):
        assert len(s) == 128 and abs(math.hypot(*s) - 1) < 1e-5
        assert _cos(f[:128], s) > 0.99999
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model="minilm-matryoshka", input="hello", dimensions=1000)
    assert err.value.param == "dimensions"


def test_embeddings_from_a_chat_model_is_a_clear_400(srv: Server, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model="smol-onnx", input="hello")
    assert err.value.param == "model" and "makes no embeddings" in err.value.message
    httpx.post(srv.url + "/models/unload", json={"model": MINILM}, timeout=60)
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MINILM, messages=QUESTION, max_tokens=4)
    assert "only makes embeddings" in err.value.message and err.value.param == "model"
    # refused from its files: it was loaded first (evicting another model) then refused
    template = httpx.post(srv.url + "/apply-template", json={"model": MINILM, "messages": QUESTION})
    assert template.status_code == 400 and "only makes embeddings" in template.text
    status = {m["id"]: m["status"]["value"] for m in httpx.get(srv.url + "/models").json()["data"]}
    assert status[MINILM] == "unloaded"
    r = httpx.post(srv.url + "/v1/embeddings", json={"model": MINILM, "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


# -- PyTorch checkpoints ----------------------------------------------------------------------


def test_pickle_only_checkpoint_is_refused_unless_allowed(srv: Server, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oai.completions.create(model="pickled", prompt="Hello", max_tokens=3)
    assert err.value.code == "model_load_failed"
    status = srv.wait_status("pickled", "error")["status"]
    for words in ("needs pickle", "argparse.Namespace", "allow_pickle"):
        assert words in status["error"], status
    done = oai.completions.create(model="pickled-allowed", prompt="Hello", max_tokens=3)
    assert done.choices[0].finish_reason in ("length", "stop")
    assert srv.models()["pickled-allowed"]["status"]["value"] == "loaded"
