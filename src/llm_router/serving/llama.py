"""llama-server's own endpoints on a local model: tokenize, detokenize, apply the chat template,
and the model's properties. Knows nothing of HTTP.

Each request leases the model it names as a generation does (routing/local.py): loaded on
demand, queued when its slots are busy, kept alive after; the work runs in its worker, between
decode steps. Routes and remote targets are refused: these answers are about one model's own
tokenizer and template."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .. import __version__
from ..errors import BadRequest
from ..protocol import (
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    GenerationSettings,
    ModelProps,
    RouterProps,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)
from ..routing.dispatcher import Dispatcher
from ..routing.targets import Lease
from ..types import DEFAULT_ORDER, LLAMA_DEFAULTS, SamplingParams

__all__ = ["BUILD_INFO", "LlamaService", "piece_json"]

BUILD_INFO = f"llm-router {__version__}"
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "a random seed each time"


class LlamaService:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def _named(self, model: str | None) -> str:
        """The model a request names, else the server's `default_model` (llama-server's `-m`
        serves its one model to requests naming none; these routes required one)."""
        named = model or self.dispatcher.settings.default_model
        if not named:
            raise BadRequest("`model` is required: this server has no default_model", param="model")
        return named

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        """Raises ModelNotFound, BadRequest (a route or remote target), or what leasing the
        model raises (ModelNotLoaded, QueueFull, ModelLoadFailed...)."""
        target = self.dispatcher.local(self._named(req.model), "/tokenize")
        async with target.worker(Lease(req.autoload)) as worker:
            tokens = await worker.tokenize(
                req.content, add_special=req.add_special, parse_special=req.parse_special
            )
            if not req.with_pieces:
                return TokenizeResponse(tokens=tokens)
            pieces = await worker.pieces(tokens)
        return TokenizeResponse(
            tokens=[
                TokenPiece(id=t, piece=piece_json(p)) for t, p in zip(tokens, pieces, strict=True)
            ]
        )

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        """As `tokenize`; BadRequest (param `tokens`) for an id not in the vocabulary."""
        target = self.dispatcher.local(self._named(req.model), "/detokenize")
        async with target.worker(Lease(req.autoload)) as worker:
            pieces = await worker.pieces(list(req.tokens))
        return DetokenizeResponse(content=b"".join(pieces).decode("utf-8", "replace"))

    async def apply_template(self, req: ApplyTemplateRequest) -> ApplyTemplateResponse:
        """The prompt a chat completion with this body evaluates: the configured system prompt
        and the tools in it as for a generation. As `tokenize`; BadRequest for a model without
        a chat template and a conversation the template refuses."""
        target = self.dispatcher.local(self._named(req.model), "/apply-template")
        target.check_generates()  # an embedding model has no chat template: said unloaded
        try:
            request = target.prepared(req.to_request())
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None
        async with target.worker(Lease(req.autoload)) as worker:
            prompt = await worker.chat_prompt(request.messages or (), request.template)
        return ApplyTemplateResponse(prompt=prompt)

    async def prompt_tokens(self, req: ApplyTemplateRequest, what: str) -> int:
        """The tokens the prompt of a chat completion with this body counts, as a generation
        counts it (the template applied, special tokens added: `prompt_tokens` of its usage).
        As `apply_template`; `what` names the route in a remote target's 400."""
        target = self.dispatcher.local(self._named(req.model), what)
        target.check_generates()
        try:
            request = target.prepared(req.to_request())
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None
        async with target.worker(Lease(req.autoload)) as worker:
            return await worker.prompt_tokens(
                messages=request.messages or (), options=request.template
            )

    async def props(
        self, model: str | None, autoload: bool | None = None
    ) -> ModelProps | RouterProps:
        """The model's properties (loading it), or without `model` the router's own, as
        llama-server's router mode answers."""
        if model is None:
            settings = self.dispatcher.settings
            return RouterProps(
                max_instances=settings.models_max,
                models_autoload=settings.autoload,
                default_generation_settings=GenerationSettings(n_ctx=0, params={}),
                build_info=BUILD_INFO,
            )
        target = self.dispatcher.local(model, "/props")
        async with target.worker(Lease(autoload)) as worker:
            template = await worker.template_info()
            info = dict(worker.info)
        sampling: dict[str, Any] = {
            k: tuple(v) if k == "stop" else v for k, v in target.config.sampling.fill({}).items()
        }
        params = SamplingParams(**sampling)
        return ModelProps(
            default_generation_settings=GenerationSettings(
                n_ctx=int(info.get("context_size") or 0), params=_params(params)
            ),
            total_slots=int(info.get("parallel") or 1),
            model_alias=target.id,
            chat_template=template.get("chat_template", ""),
            bos_token=template.get("bos_token", ""),
            eos_token=template.get("eos_token", ""),
            build_info=BUILD_INFO,
        )


def _params(p: SamplingParams) -> dict[str, Any]:
    """Sampling defaults under llama-server's names (`n_predict` -1: no limit)."""
    values = asdict(p)
    n_predict = -1 if p.max_tokens is None else p.max_tokens
    llama = asdict(p.llama or LLAMA_DEFAULTS)
    llama["dry_sequence_breakers"] = list(llama["dry_sequence_breakers"])
    llama["samplers"] = list(llama["samplers"] or DEFAULT_ORDER)  # the chain, in its order
    own = ("max_tokens", "stop", "seed", "llama", "penalty_last_n", "logprobs")
    return {
        **{k: v for k, v in values.items() if k not in own},
        **llama,
        "repeat_last_n": p.penalty_last_n,
        "seed": LLAMA_DEFAULT_SEED if p.seed is None else p.seed,
        "n_predict": n_predict,
        "max_tokens": n_predict,
        "n_probs": p.logprobs or 0,
        "n_keep": 0,  # the prompt's tokens kept when the context shifts: it never shifts here
        "stream": False,
        "stop": list(p.stop),
    }


def piece_json(piece: bytes) -> str | list[int]:
    """A token's piece as llama-server writes it: text when its bytes are valid UTF-8 on their
    own, else the list of byte values."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)
