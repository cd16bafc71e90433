"""Counting a prompt before it runs (routing/admission.py): the remote estimate, and the local
count by the model's tokenizer, asked of its worker (a stand-in here; the real model's count
is checked against its usage in tests/gateway/test_gateway_openai.py)."""

from __future__ import annotations

from typing import Any, cast

from llm_router.errors import BadRequest
from llm_router.routing.admission import count_local, estimate
from llm_router.types import ChatMessage, GenerationRequest, TemplateOptions


class Worker:
    """The worker's text operation count_local uses, recorded with what it does."""

    def __init__(self, template: bool = True) -> None:
        self.template = template
        self.asked: list[str] = []

    async def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        self.asked.append("chat_prompt")
        if not self.template:
            raise BadRequest("this model has no chat template", param="messages")
        return "".join(f"<{m.role}>{m.content}" for m in messages) + "<assistant>"

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        self.asked.append(f"tokenize {add_special} {parse_special}")
        return list(range(len(text.split(">"))))

    async def prompt_tokens(
        self,
        *,
        text: str = "",
        messages: tuple[ChatMessage, ...] | None = None,
        options: TemplateOptions | None = None,
    ) -> int:
        """As the worker does it: the template, then the tokens, in one operation."""
        self.asked.append("prompt_tokens")
        if messages is not None:
            text = await self.chat_prompt(messages)
        return len(await self.tokenize(text, add_special=True, parse_special=True))


CHAT = GenerationRequest(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))


def test_the_estimate_is_four_characters_a_token_and_four_a_message() -> None:
    assert estimate(CHAT) == 3 + (4 + 3) + (4 + 1)
    assert estimate(GenerationRequest(prompt="x" * 9)) == 3
    assert estimate(GenerationRequest(prompt="")) == 0
    assert estimate(GenerationRequest(prompt_tokens=(1, 2, 3, 4, 5))) == 5


async def test_a_local_count_is_the_template_applied_then_tokenized() -> None:
    worker = Worker()
    count = await count_local(cast(Any, worker), CHAT, context=2048)
    assert count == 4  # "<system>Be brief.<user>Hi<assistant>" split on ">"
    assert worker.asked == ["prompt_tokens", "chat_prompt", "tokenize True True"]  # one trip

    worker = Worker()
    assert await count_local(cast(Any, worker), GenerationRequest(prompt="a>b"), context=2048) == 2
    assert worker.asked == ["prompt_tokens", "tokenize True True"]  # a prompt: no template
    ids = GenerationRequest(prompt_tokens=(7, 8, 9))
    assert await count_local(cast(Any, Worker()), ids) == 3


async def test_what_the_worker_cannot_or_should_not_count_is_estimated() -> None:
    worker = Worker(template=False)  # the generation refuses it, more clearly
    assert await count_local(cast(Any, worker), CHAT, context=2048) == estimate(CHAT)
    huge = GenerationRequest(prompt="x" * (64 * 100 + 1))  # cannot fit 100 tokens anyway
    worker = Worker()
    assert await count_local(cast(Any, worker), huge, context=100) == estimate(huge)
    assert worker.asked == []  # never tokenized: it would stall the model's streams
