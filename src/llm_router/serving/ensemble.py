"""One question to several targets at once: `ensemble` combines the answers (vote, best-of,
first), `compare` returns them side by side with latency, tokens and cost. Knows no HTTP.

Each answer is an ordinary routed chat completion (so breakers, stats and local loading all
apply); a target that fails is reported, not fatal, as long as one answers."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..errors import BadRequest, ModelNotFound, RouterError
from ..protocol import MAX_MODEL_NAME, ChatCompletion, ChatCompletionRequest, Float, UsageOut
from ..routing.ensemble import Scorer, agreement, vote
from ..routing.local import LocalTarget
from .generate import GenerationService
from .route_info import RouteInfo

log = logging.getLogger(__name__)

__all__ = [
    "Answer",
    "CompareRequest",
    "CompareResult",
    "EnsembleDetails",
    "EnsembleRequest",
    "EnsembleResult",
    "EnsembleService",
]


class CompareRequest(ChatCompletionRequest):
    model: str = "compare"
    targets: list[Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]] = Field(
        min_length=2, max_length=16, json_schema_extra={"uniqueItems": True}
    )

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: list[str]) -> list[str]:
        """Each target once: asking the same one twice only multiplies its cost."""
        distinct = list(dict.fromkeys(targets))
        if len(distinct) < 2:
            raise ValueError("name at least two different targets")
        return distinct

    @field_validator("stream")
    @classmethod
    def _whole(cls, stream: bool) -> bool:
        """The answers come together, in one JSON body: a stream asked for is refused rather
        than silently not sent (the client would wait for events that never come)."""
        if stream:
            raise ValueError("the answers come in one JSON body: `stream` must be false here")
        return stream

    @model_validator(mode="after")
    def _turns(self) -> CompareRequest:
        """A turn a chat refuses (BadRequest) is refused before any target is asked: each
        target's answer carried the same error, under a 200."""
        for index, message in enumerate(self.messages):
            message.to_message(index)
        return self

    @field_validator("n")
    @classmethod
    def _one(cls, n: int | None) -> int | None:
        """One answer a target: `n` > 1 was asked for, paid for, and all but the first
        dropped."""
        if n is not None and n > 1:
            raise ValueError("each target gives one answer here: `n` must be 1")
        return n


class EnsembleRequest(CompareRequest):
    model: str = "ensemble"
    mode: Literal["vote", "best-of", "first"] = "vote"
    weights: dict[str, Annotated[Float, Field(ge=0)]] = Field(default_factory=dict)
    scorer: str = Field(
        "agreement",
        max_length=64,
        description="agreement, judge, or a scorer the configuration names (ensemble_scorers)",
    )
    judge: str | None = Field(None, description="Model that picks the best answer (scorer judge).")


class Answer(BaseModel):
    """One target's answer in /v1/compare and /v1/ensemble: the text, or why there is none."""

    model: str
    content: str | None
    finish_reason: str | None = None
    usage: UsageOut | None = None
    latency_ms: float
    cost: float | None = None
    error: str | None = None


class CompareResult(BaseModel):
    object: Literal["list"] = "list"
    data: list[Answer]


class EnsembleDetails(BaseModel):
    mode: str
    chosen: str
    answers: list[Answer]
    votes: dict[str, float] | None = None  # vote: each normalised answer's weight
    scorer: str | None = None  # best-of


class EnsembleResult(ChatCompletion):
    """The chosen target's chat completion, with how it was chosen."""

    ensemble: EnsembleDetails


@dataclass(frozen=True, slots=True)
class _Asked:
    answer: Answer
    completion: ChatCompletion | None  # None: the target failed
    error: RouterError | None = None  # why


def _none_answered(asked: list[_Asked]) -> RouterError:
    """Every target failed: the request's fault when each refused it (a 400), else the first
    other failure (an upstream's 502, a busy model's 503 with its Retry-After...) with every
    target's reason."""
    message = "no target answered: " + "; ".join(
        f"{a.answer.model}: {a.answer.error}" for a in asked
    )
    theirs = [a.error for a in asked if not isinstance(a.error, BadRequest | ModelNotFound)]
    if not theirs or theirs[0] is None:
        return BadRequest(message, param="targets")
    failure = theirs[0]
    failure.message, failure.args = message, (message,)
    return failure


class EnsembleService:
    def __init__(
        self, generation: GenerationService, scorers: dict[str, Scorer] | None = None
    ) -> None:
        self.generation = generation
        self.scorers = scorers or {"agreement": agreement}

    async def _ask(self, req: CompareRequest, target: str, route: RouteInfo) -> _Asked:
        one = ChatCompletionRequest.model_validate(
            {
                **req.model_dump(
                    exclude={"targets", "mode", "weights", "scorer", "judge"}, by_alias=True
                ),
                "model": target,
                "stream": False,
            }
        )
        started = time.perf_counter()
        part = route.part()
        try:
            done = await self.generation.chat(one, part)
        except RouterError as exc:
            failed = Answer(model=target, content=None, error=exc.message, latency_ms=_ms(started))
            return _Asked(failed, None, exc)
        cost = self.generation.dispatcher.price(part.target).spend(
            done.usage.prompt_tokens, done.usage.completion_tokens
        )
        choice = done.choices[0]
        answer = Answer(
            model=part.target,
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            usage=done.usage,
            latency_ms=_ms(started),
            cost=cost,
        )
        return _Asked(answer, done)

    async def compare(self, req: CompareRequest, route: RouteInfo | None = None) -> CompareResult:
        """`route`, when given, gets a record per target asked (`parts`: usage accounting)."""
        route = route or RouteInfo()
        route.model = req.model
        asked = await asyncio.gather(*(self._ask(req, t, route) for t in req.targets))
        route.sum_parts()
        return CompareResult(data=[a.answer for a in asked])

    async def ensemble(
        self, req: EnsembleRequest, route: RouteInfo | None = None
    ) -> EnsembleResult:
        """`route`, when given, gets a record per target asked, the judge's included."""
        route = route or RouteInfo()
        route.model = req.model
        if req.mode == "best-of" and req.scorer != "judge" and req.scorer not in self.scorers:
            known = ", ".join(sorted([*self.scorers, "judge"]))
            raise BadRequest(
                f"unknown scorer {req.scorer!r}: use one of {known} (custom "
                "scorers are named in the configuration's ensemble_scorers)",
                param="scorer",
            )
        if req.mode == "best-of" and req.scorer == "judge":
            self._check_judge(req.judge)
        resolve = self.generation.dispatcher.resolve
        asked_as = [resolve(t) for t in req.targets]  # unknown names fail before any work
        weights = _weights(req.weights, asked_as, resolve)
        asked = await (self._first(req, route) if req.mode == "first" else self._all(req, route))
        good = [a for a in asked if a.completion is not None]
        if not good:
            raise _none_answered(asked)
        votes: dict[str, float] | None = None
        scorer = req.scorer if req.mode == "best-of" else None
        if req.mode == "vote":  # each answer weighs as the name it was asked by (an alias too)
            ballots = [
                (asked_as[i], a.answer.content or "")
                for i, a in enumerate(asked)
                if a.completion is not None
            ]
            index, votes = vote(ballots, weights)
        elif req.mode == "best-of":
            index, scorer = await self._best(req, [a.answer.content or "" for a in good], route)
        else:
            index = 0
        chosen = good[index]
        assert chosen.completion is not None
        route.target = chosen.answer.model
        route.sum_parts()
        details = EnsembleDetails(
            mode=req.mode,
            chosen=chosen.answer.model,
            answers=[a.answer for a in asked],
            votes=votes,
            scorer=scorer,
        )
        return EnsembleResult(**chosen.completion.model_dump(), ensemble=details)

    def _check_judge(self, judge: str | None) -> None:
        """The judge is asked once every target has answered, and its failure falls back to
        agreement: a judge that cannot be asked at all (no such model, one that only makes
        embeddings) fell back too, under a 200 (found from outside). A 404 or a 400 naming
        `judge` now, before any target is asked."""
        if not judge:
            raise BadRequest("scorer 'judge' needs a `judge` model", param="judge")
        dispatcher = self.generation.dispatcher
        try:
            dispatcher.resolve(judge)  # a model, an alias, a remote target or a route
        except ModelNotFound as exc:
            raise ModelNotFound(f"`judge`: {exc.message}", param="judge") from None
        try:
            target = dispatcher.target(judge)
        except ModelNotFound:
            return  # a route: it is asked as any chat is
        if isinstance(target, LocalTarget):
            try:
                target.check_generates()
            except BadRequest as exc:
                raise BadRequest(f"`judge`: {exc.message}", param="judge") from None

    async def _all(self, req: EnsembleRequest, route: RouteInfo) -> list[_Asked]:
        return list(await asyncio.gather(*(self._ask(req, t, route) for t in req.targets)))

    async def _first(self, req: EnsembleRequest, route: RouteInfo) -> list[_Asked]:
        """The fastest good answer, and every other target's in `targets` order: a failure,
        or, for those still asked when it came, cancelled (their targets see it)."""
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(self._ask(req, t, route)) for t in req.targets]
        pending = set(tasks)
        try:
            while pending and not any(_answered(t) for t in tasks):
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return [
            task.result()
            if task not in pending
            else _Asked(
                Answer(
                    model=target,
                    content=None,
                    error="cancelled: another target answered first",
                    latency_ms=_ms(started),
                ),
                None,
            )
            for target, task in zip(req.targets, tasks, strict=True)
        ]

    async def _best(
        self, req: EnsembleRequest, texts: list[str], route: RouteInfo
    ) -> tuple[int, str]:
        """The best answer's index, and the scorer that chose it: the judge's verdict, or
        agreement when the judge failed (every answer is in; the judge's error is said) or
        named no answer."""
        question = req.messages[-1].text()
        if req.scorer != "judge":
            return self.scorers[req.scorer](question, texts), req.scorer
        assert req.judge
        listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
        ask = ChatCompletionRequest.model_validate(
            {
                "model": req.judge,
                "temperature": 0,
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": f"Question: {question}\nAnswers:\n{listing}\n"
                        "Reply with the number of the best answer only.",
                    }
                ],
            }
        )
        try:
            judged = await self.generation.chat(ask, route.part())
        except RouterError as exc:
            log.warning("ensemble: the judge %s failed (%s); agreement picks", req.judge, exc)
            return agreement(question, texts), f"agreement (the judge failed: {exc.message})"
        verdict = judged.choices[0].message.content or ""
        match = re.search(r"\d+", verdict)
        pick = int(match.group()) - 1 if match else -1
        if 0 <= pick < len(texts):
            return pick, "judge"
        return agreement(question, texts), "agreement (the judge named no answer)"


def _weights(
    given: dict[str, float], asked_as: list[str], resolve: Callable[[str], str]
) -> dict[str, float]:
    """Vote weights by the name each target resolves to (an alias weighs for its model, a
    route for its answers); a weight for no target asked is a 400, not ignored."""
    out: dict[str, float] = {}
    for name, weight in given.items():
        try:
            canonical = resolve(name)
        except RouterError:
            canonical = None
        if canonical not in asked_as:
            raise BadRequest(
                f"`weights` names {name!r}, which is none of `targets`", param="weights"
            )
        out[canonical] = weight
    return out


def _answered(task: asyncio.Future[_Asked]) -> bool:
    return task.done() and not task.cancelled() and task.result().completion is not None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
