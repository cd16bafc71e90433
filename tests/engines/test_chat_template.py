"""Chat templates: which one a model gets, and what it renders."""

from __future__ import annotations

import pytest

from llm_router.engines.chat_template import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    TRANSCRIPT_STOPS,
    TRANSCRIPT_TEMPLATE,
    ChatTemplate,
    template_for,
)
from llm_router.errors import BadRequest
from llm_router.types import ChatMessage


def _msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]


# -- choosing a template ----------------------------------------------------------------------


def test_override_beats_embedded() -> None:
    assert template_for("gemma3", "EMBEDDED", "OVERRIDE", "it") == ("OVERRIDE", ())


def test_embedded_beats_known_architecture() -> None:
    assert template_for("gemma3", "EMBEDDED", None, "it") == ("EMBEDDED", ())


def test_embedded_is_used_for_a_base_model_too() -> None:
    assert template_for("llama", "EMBEDDED", None, None) == ("EMBEDDED", ())


@pytest.mark.parametrize("finetune", ["it", "IT", "Instruct", "chat", "sft-instruct"])
def test_instruct_tuned_gemma3_without_template_gets_gemma_turns(finetune: str) -> None:
    assert template_for("gemma3", None, None, finetune) == (GEMMA_TEMPLATE, ())


def test_instruct_tuned_qwen2_gets_chatml() -> None:
    assert template_for("qwen2", None, None, "Instruct") == (CHATML_TEMPLATE, ())


@pytest.mark.parametrize("architecture", ["mysterynet", None])
def test_unknown_architecture_instruct_tuned_refuses_chat(architecture: str | None) -> None:
    assert template_for(architecture, None, None, "Instruct") is None


@pytest.mark.parametrize("finetune", [None, "", "base", "pretrain", "italian"])
def test_base_model_gets_the_transcript(finetune: str | None) -> None:
    assert template_for("gemma3", None, None, finetune) == (TRANSCRIPT_TEMPLATE, TRANSCRIPT_STOPS)


# -- rendering --------------------------------------------------------------------------------


def test_gemma_merges_system_prompt_into_first_user_turn() -> None:
    template = ChatTemplate(GEMMA_TEMPLATE, bos_token="<bos>")
    text = template.render(
        _msgs(
            ("system", "Be brief."),
            ("user", "Capital of France?"),
            ("assistant", "Paris."),
            ("user", "And Italy?"),
        )
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd Italy?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_system_prompt() -> None:
    text = ChatTemplate(GEMMA_TEMPLATE).render(_msgs(("user", "  Hi  ")))
    assert text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_transcript_renders_turns_and_prompts_the_assistant() -> None:
    template = ChatTemplate(TRANSCRIPT_TEMPLATE, stops=TRANSCRIPT_STOPS)
    assert template.render(_msgs(("user", "Capital of France?"))) == (
        "User: Capital of France?\nAssistant:"
    )
    assert template.render(_msgs(("system", "Be brief."), ("user", "Hi"))) == (
        "System: Be brief.\nUser: Hi\nAssistant:"
    )
    assert template.stops == ("\nUser:", "\nSystem:")


def test_chatml_renders_turns() -> None:
    text = ChatTemplate(CHATML_TEMPLATE).render(_msgs(("user", "Hi")))
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_bos_and_eos_tokens_reach_the_template() -> None:
    template = ChatTemplate("{{ bos_token }}|{{ eos_token }}", bos_token="<s>", eos_token="</s>")
    assert template.render(_msgs(("user", "x"))) == "<s>|</s>"


def test_template_refusal_is_a_bad_request_on_messages() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation must start with a user message') }}"
        "{% endif %}ok"
    )
    assert template.render(_msgs(("user", "hi"))) == "ok"
    with pytest.raises(BadRequest) as info:
        template.render(_msgs(("assistant", "hi")))
    assert info.value.param == "messages"
    assert "Conversation must start with a user message" in info.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages[5]['content'] }}",  # undefined
        "{{ messages[0]['content'] + 1 }}",  # type error
        "{{ messages.__class__.__mro__ }}",  # sandbox refuses
    ],
)
def test_jinja_error_while_rendering_is_a_bad_request(source: str) -> None:
    with pytest.raises(BadRequest) as info:
        ChatTemplate(source).render(_msgs(("user", "hi")))
    assert info.value.param == "messages"


def test_strftime_now_is_available() -> None:
    text = ChatTemplate("{{ strftime_now('%Y') }}").render(_msgs(("user", "hi")))
    assert text.isdigit() and len(text) == 4


def test_a_chat_ending_with_an_assistant_message_is_continued_from_it() -> None:
    """A trailing assistant message was closed and a new turn begun; llama-server and Ollama
    continue from it (a prefill), and so does this now (found from outside)."""
    from llm_router.engines.chat_template import CHATML_TEMPLATE, ChatTemplate
    from llm_router.types import ChatMessage, ToolCall

    t = ChatTemplate(CHATML_TEMPLATE)
    asked = [ChatMessage("user", "Say hello"), ChatMessage("assistant", "Hel")]
    assert t.render(asked) == t.render(asked[:1]) + "Hel"
    assert t.render(asked).endswith("<|im_start|>assistant\nHel")
    parts = t.render_parts(asked)  # its text is content, not the template's
    assert parts[-1] == ("Hel", True) and "".join(p for p, _ in parts) == t.render(asked)
    called = ChatMessage("assistant", "", (ToolCall("c1", "f", "{}"),))
    assert t.render([asked[0], called]).endswith("<|im_start|>assistant\n")  # not a prefill
