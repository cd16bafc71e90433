"""llama-server's sampler fields in a request (`typical_p`, `mirostat`, `xtc_*`, `dry_*`,
`top_n_sigma`, `dynatemp_*`, `repeat_last_n`, `min_keep`): read from the body's unknown fields
only when one is there, so the common request pays nothing for them, and checked against the
bounds llama-server sets (a 400 names the field). The llama.cpp engine builds its chain from
them in llama-server's order (engines/llamacpp_sampler.build_chain); another engine refuses a
request that sets one rather than sample otherwise."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadRequest
from ..types import DEFAULT_ORDER, LLAMA_DEFAULTS, LlamaSampling, SamplingParams
from .invalid import describe_invalid
from .numbers import Float, Int

__all__ = ["LLAMA_SAMPLING_FIELDS", "llama_sampling"]

MAX_INT = 2**31 - 1  # llama.cpp's counts are C ints


_D = LLAMA_DEFAULTS


class LlamaSamplingIn(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    typical_p: Float = Field(_D.typical_p, ge=0, le=1)
    top_n_sigma: Float = Field(_D.top_n_sigma, ge=-1000, le=1000)  # <= 0: off
    xtc_probability: Float = Field(_D.xtc_probability, ge=0, le=1)
    xtc_threshold: Float = Field(_D.xtc_threshold, ge=0, le=1)  # > 0.5: off
    dynatemp_range: Float = Field(_D.dynatemp_range, ge=0, le=10)
    dynatemp_exponent: Float = Field(_D.dynatemp_exponent, ge=0, le=100)
    dry_multiplier: Float = Field(_D.dry_multiplier, ge=0, le=100)
    dry_base: Float = Field(_D.dry_base, ge=0, le=10)  # < 1: the default, as llama-server
    dry_allowed_length: Int = Field(_D.dry_allowed_length, ge=0, le=MAX_INT)
    dry_penalty_last_n: Int = Field(_D.dry_penalty_last_n, ge=-1, le=MAX_INT)  # -1: context
    dry_sequence_breakers: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]],
        Field(min_length=1, max_length=64),
    ] = Field(list(_D.dry_sequence_breakers))
    mirostat: Int = Field(_D.mirostat, ge=0, le=2)
    mirostat_tau: Float = Field(_D.mirostat_tau, ge=0, le=100)
    mirostat_eta: Float = Field(_D.mirostat_eta, ge=0, le=1)
    min_keep: Int = Field(_D.min_keep, ge=0, le=MAX_INT)
    samplers: (
        Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=32)]
        | Annotated[str, Field(max_length=32)]
        | None
    ) = None
    repeat_last_n: Int = Field(  # -1: the context; 0: no penalties
        SamplingParams().penalty_last_n, ge=-1, le=MAX_INT
    )


LLAMA_SAMPLING_FIELDS = frozenset(LlamaSamplingIn.model_fields)

# llama-server's names of its samplers (common_sampler_types_from_names: the canonical ones,
# kebab-case, without the underscore, and a few more), and its letters for them
_NAMES = (
    {name: name for name in DEFAULT_ORDER}
    | {
        alias: name
        for name in DEFAULT_ORDER
        if "_" in name
        for alias in (name.replace("_", "-"), name.replace("_", ""))
    }
    | {"nucleus": "top_p", "temp": "temperature", "typ": "typ_p"}
)
_LETTERS = {
    "e": "penalties",
    "d": "dry",
    "s": "top_n_sigma",
    "k": "top_k",
    "y": "typ_p",
    "p": "top_p",
    "m": "min_p",
    "x": "xtc",
    "t": "temperature",
}
_NOT_HERE = {"infill", "adaptive_p", "adaptive-p", "adaptivep", "i", "a"}


def _order(samplers: list[str] | str) -> tuple[str, ...]:
    """`samplers` (llama-server's: a list of names, or a string of letters) as the names of
    DEFAULT_ORDER, in its order. A name llama-server does not know is left out, as it leaves
    it out (with a warning in its log); its infill and adaptive-p samplers are refused here."""
    asked = [n.lower() for n in samplers] if isinstance(samplers, list) else list(samplers)
    table = _NAMES if isinstance(samplers, list) else _LETTERS
    for name in asked:
        if name in _NOT_HERE:
            raise BadRequest(
                f"`samplers`: {name!r} (llama.cpp's infill or adaptive-p sampler) is not served "
                "here; leave it out",
                param="samplers",
            )
    return tuple(table[n] for n in asked if n in table)


def llama_sampling(extra: dict[str, Any]) -> tuple[LlamaSampling | None, int | None]:
    """The llama.cpp samplers a request's unknown fields set (None when they set none; null
    is a field left out), and its `repeat_last_n` (None when not given). Raises BadRequest
    for a value out of llama-server's bounds, naming the field."""
    given = {k: v for k, v in extra.items() if k in LLAMA_SAMPLING_FIELDS and v is not None}
    if not given:
        return None, None
    try:
        fields = LlamaSamplingIn.model_validate(given)
    except ValidationError as exc:
        param, message = describe_invalid(exc.errors())
        raise BadRequest(message, param=param) from None
    values = fields.model_dump(exclude={"repeat_last_n"})
    values["dry_sequence_breakers"] = tuple(values["dry_sequence_breakers"])
    if fields.samplers is not None:
        values["samplers"] = _order(fields.samplers)
    if values["dry_base"] < 1:
        values["dry_base"] = _D.dry_base
    llama = LlamaSampling(**values)
    last_n = fields.repeat_last_n if "repeat_last_n" in given else None
    return (llama if llama != _D else None), last_n
