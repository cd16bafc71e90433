"""HF safetensors folder -> GGUF, written with gguf-py (the `gguf` package llama.cpp publishes):
its writer, its HF -> GGUF tensor name map and its metadata keys. What llama.cpp's own
`convert_hf_to_gguf.py` does for the architectures listed in `_ARCHS`, and nothing else:
any other architecture, tokenizer or RoPE scaling is refused, naming what it is.

Tensors are streamed: the header is written from the safetensors headers, then one tensor at
a time is read, converted and appended, so memory holds one tensor, not the model. Blocks for
the whole conversion (a few seconds for a 135M model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelFile
from ..formats.hf import find_weights, read_chat_template, read_json
from .common import ConversionError, Progress

if TYPE_CHECKING:
    import gguf
    import numpy as np
    import numpy.typing as npt

__all__ = ["GGUF_OUTTYPES", "hf_to_gguf"]

GGUF_OUTTYPES = ("f16", "bf16", "f32")
_SKIPPED = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


@dataclass(frozen=True, slots=True)
class _Arch:
    """How one HF architecture becomes a GGUF one."""

    gguf_name: str  # a gguf.MODEL_ARCH member's name
    fix: Callable[[str, npt.NDArray[Any], dict[str, Any]], npt.NDArray[Any]]


def _permute(w: npt.NDArray[Any], n_head: int) -> npt.NDArray[Any]:
    """HF's rotate-half RoPE layout of Q/K rows -> the interleaved pairs llama.cpp's `llama`
    graph rotates (as `LlamaModel.permute` in llama.cpp's converter)."""
    pairs = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    return pairs.swapaxes(1, 2).reshape(w.shape)


def _llama_fix(name: str, w: npt.NDArray[Any], config: dict[str, Any]) -> npt.NDArray[Any]:
    n_head = int(config["num_attention_heads"])
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(w, n_head)
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(w, int(config.get("num_key_value_heads") or n_head))
    return w


_ARCHS: dict[str, _Arch] = {"LlamaForCausalLM": _Arch("LLAMA", _llama_fix)}


@dataclass(frozen=True, slots=True)
class _Tensor:
    hf_name: str
    gguf_name: str
    file: Path
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType


def hf_to_gguf(src: Path, out: Path, outtype: str, report: Progress) -> None:
    """Write the HF folder `src` as the GGUF file `out` (weights in `outtype`; norms and other
    1-D tensors in f32, as llama.cpp wants them). Raises ConversionError naming what is not
    supported (architecture, tokenizer, RoPE scaling) or what is missing or unreadable."""
    try:
        import gguf
        import safetensors
        import torch  # noqa: F401  (reads bf16, which numpy cannot)
    except ImportError as exc:
        raise ConversionError(
            f"converting to GGUF needs gguf, safetensors and torch: "
            f"pip install 'llm-runner-router[hf]' ({exc})"
        ) from exc
    if outtype not in GGUF_OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(GGUF_OUTTYPES)}")
    config = _read(src / "config.json")
    arch = _arch(src, config)
    _rope(src, config)
    weights = [w for w in find_weights(src) if w.suffix == ".safetensors"]
    if not weights:
        raise ConversionError(f"{src}: no .safetensors weights (GGUF conversion reads only those)")
    try:
        vocab = _Vocab.read(src, config)
        plan = _plan(src, weights, config, arch, outtype)
        writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.gguf_name]])
        try:
            report(
                f"writing {config['architectures'][0]} as GGUF "
                f"{arch.gguf_name.lower()}, {len(plan)} tensors in {outtype}"
            )
            _add_params(writer, src, config, outtype)
            vocab.add_to(writer)
            _write_tensors(writer, plan, config, arch, report)
        finally:
            writer.close()
    except KeyError as exc:
        raise ConversionError(f"{src}: config.json or tokenizer.json lacks {exc}") from exc
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as exc:
        raise ConversionError(f"{src}: cannot convert to GGUF: {exc}") from exc


def _write_tensors(
    writer: gguf.GGUFWriter,
    plan: list[_Tensor],
    config: dict[str, Any],
    arch: _Arch,
    report: Progress,
) -> None:
    """The header from the plan, then each tensor as it is converted (one in memory at once)."""
    for t in plan:
        writer.add_tensor_info(
            t.gguf_name, _byte_shape(t), _np_dtype(t), _nbytes(t), raw_dtype=t.qtype
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    every = max(1, len(plan) // 10)
    for i, (t, data) in enumerate(_converted(plan, config, arch), start=1):
        writer.write_tensor_data(data)
        if i % every == 0 or i == len(plan):
            report(f"tensor {i}/{len(plan)}: {t.gguf_name} ({t.qtype.name})")


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except InvalidModelFile as exc:
        raise ConversionError(exc.message) from exc


def _arch(src: Path, config: dict[str, Any]) -> _Arch:
    archs = config.get("architectures") or []
    name = str(archs[0]) if archs else f"model_type {config.get('model_type')!r}"
    arch = _ARCHS.get(name)
    if arch is None:
        raise ConversionError(
            f"{src}: architecture {name} cannot be converted to GGUF yet "
            f"(supported: {', '.join(sorted(_ARCHS))})"
        )
    return arch


def _rope(src: Path, config: dict[str, Any]) -> tuple[float | None, float | None]:
    """RoPE base and linear scaling factor, from the top level and `rope_scaling`
    (transformers 4) or `rope_parameters` (5). Other scalings (llama3, yarn...) are refused."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ConversionError(f"{src}: RoPE scaling {kind!r} cannot be converted to GGUF yet")
    theta = config.get("rope_theta", params.get("rope_theta"))
    factor = params.get("factor") if kind == "linear" else None
    return (
        float(theta) if theta is not None else None,
        float(factor) if factor is not None else None,
    )


def _add_params(writer: gguf.GGUFWriter, src: Path, config: dict[str, Any], outtype: str) -> None:
    import gguf

    n_head = int(config["num_attention_heads"])
    head_dim = config.get("head_dim") or int(config["hidden_size"]) // n_head
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(src.name)
    if isinstance(finetune := config.get("finetune"), str) and finetune:  # kept by --to hf
        writer.add_finetune(finetune)
    writer.add_block_count(int(config["num_hidden_layers"]))
    if config.get("max_position_embeddings"):
        writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_rope_dimension_count(int(head_dim))
    if config.get("head_dim"):
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    theta, factor = _rope(src, config)
    if theta is not None:
        writer.add_rope_freq_base(theta)
    if factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(_FILE_TYPES[outtype]())
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _ftype(name: str) -> Callable[[], gguf.LlamaFileType]:
    def get() -> gguf.LlamaFileType:
        import gguf

        return gguf.LlamaFileType[name]

    return get


_FILE_TYPES = {"f32": _ftype("ALL_F32"), "f16": _ftype("MOSTLY_F16"), "bf16": _ftype("MOSTLY_BF16")}


def _plan(
    src: Path, weights: list[Path], config: dict[str, Any], arch: _Arch, outtype: str
) -> list[_Tensor]:
    """Every tensor to write, in file order, named and typed, from the safetensors headers."""
    import gguf
    from safetensors import safe_open

    tied = bool(config.get("tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[arch.gguf_name], int(config["num_hidden_layers"])
    )
    wide = gguf.GGMLQuantizationType[outtype.upper()]
    plan: list[_Tensor] = []
    for file in weights:
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith(_SKIPPED) or (tied and hf_name == "lm_head.weight"):
                    continue
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ConversionError(
                        f"{src}: tensor {hf_name} has no GGUF name for {arch.gguf_name.lower()}"
                    )
                shape = tuple(f.get_slice(hf_name).get_shape())
                small = len(shape) <= 1 or gguf_name.endswith("_norm.weight")
                qtype = gguf.GGMLQuantizationType.F32 if small else wide
                plan.append(_Tensor(hf_name, gguf_name, file, shape, qtype))
    return plan


def _np_dtype(t: _Tensor) -> np.dtype[Any]:
    import numpy as np

    return np.dtype({"F32": np.float32, "F16": np.float16}.get(t.qtype.name, np.uint8))


def _byte_shape(t: _Tensor) -> tuple[int, ...]:
    """The shape gguf-py's writer expects: elements, or bytes along the last axis for BF16."""
    if t.qtype.name == "BF16":
        return (*t.shape[:-1], t.shape[-1] * 2)
    return t.shape


def _nbytes(t: _Tensor) -> int:
    count = 1
    for n in t.shape:
        count *= n
    return count * (4 if t.qtype.name == "F32" else 2)


def _converted(
    plan: list[_Tensor], config: dict[str, Any], arch: _Arch
) -> Iterator[tuple[_Tensor, npt.NDArray[Any]]]:
    """Each planned tensor's data, read, fixed for the GGUF graph and cast, one at a time."""
    import gguf
    import torch
    from safetensors import safe_open

    with ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for t in plan:
            if t.file not in handles:
                handles[t.file] = stack.enter_context(safe_open(str(t.file), framework="pt"))
            data = handles[t.file].get_tensor(t.hf_name).to(torch.float32).numpy()
            data = arch.fix(t.hf_name, data, config)
            yield t, gguf.quants.quantize(data, t.qtype)


@dataclass(frozen=True, slots=True)
class _Vocab:
    """A byte-level BPE tokenizer (`tokenizer.json`) as GGUF's "gpt2" tokenizer model."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int]  # bos, eos, unk, pad -> id
    add_bos: bool
    chat_template: str | None

    @classmethod
    def read(cls, src: Path, config: dict[str, Any]) -> _Vocab:
        if not (src / "tokenizer.json").is_file():
            raise ConversionError(f"{src}: no tokenizer.json (GGUF conversion needs one)")
        data = _read(src / "tokenizer.json")
        model = data.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback"):
            kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
            raise ConversionError(
                f"{src}: a {kind} tokenizer cannot be converted to GGUF yet (byte-level BPE only)"
            )
        tokens, types = _tokens(src, data, int(config.get("vocab_size") or 0))
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        settings = (
            _read(src / "tokenizer_config.json")
            if (src / "tokenizer_config.json").is_file()
            else {}
        )
        ids = {tok: i for i, tok in enumerate(tokens)}
        special = {}
        for kind in ("bos", "eos", "unk", "pad"):
            found = _special_id(settings.get(f"{kind}_token"), ids, config.get(f"{kind}_token_id"))
            if found is not None:
                special[kind] = found
        return cls(
            tokens,
            types,
            merges,
            _pre_tokenizer(src, data),
            special,
            _adds_bos(settings, data),
            read_chat_template(src),
        )

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_token_merges(self.merges)
        for kind, token_id in self.special.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _tokens(src: Path, data: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order (padded to the config's vocab size) and their GGUF token types."""
    import gguf

    by_id: dict[int, str] = {int(i): str(t) for t, i in (data["model"].get("vocab") or {}).items()}
    kinds: dict[int, int] = {}
    for added in data.get("added_tokens") or []:
        by_id[int(added["id"])] = str(added["content"])
        special = added.get("special")
        kinds[int(added["id"])] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [
        int(kinds.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED))
        for i in range(size)
    ]
    return tokens, types


def _adds_bos(settings: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether encoding starts with a special token: `add_bos_token` when the tokenizer config
    says, else whether tokenizer.json's post-processor template opens with one. Written
    explicitly, since llama.cpp's default for a missing flag differs by tokenizer model."""
    if isinstance(flag := settings.get("add_bos_token"), bool):
        return flag
    post = data.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


def _special_id(token: object, ids: dict[str, int], fallback: object) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and token in ids:
        return ids[token]
    return fallback if isinstance(fallback, int) else None


# tokenizer.json pre-tokenizers llama.cpp implements, keyed by what sets them apart -> the
# `tokenizer.ggml.pre` that selects the same splitting in llama.cpp (llama-vocab.cpp).
_BYTE_LEVEL = "ByteLevel"
_DIGITS_THEN_BYTE_LEVEL = "Digits(individual)+ByteLevel"
_PRE: dict[str, str] = {_BYTE_LEVEL: "gpt-2", _DIGITS_THEN_BYTE_LEVEL: "smollm"}


def _pre_tokenizer(src: Path, data: dict[str, Any]) -> str:
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    shape = "+".join(
        "Digits(individual)"
        if s.get("type") == "Digits" and s.get("individual_digits")
        else str(s.get("type")) + ("" if s.get("use_regex", True) else "(no regex)")
        for s in steps
    )
    if shape not in _PRE:
        raise ConversionError(
            f"{src}: pre-tokenizer {shape or 'none'} has no known llama.cpp equivalent "
            f"(known: {', '.join(sorted(_PRE))})"
        )
    return _PRE[shape]
