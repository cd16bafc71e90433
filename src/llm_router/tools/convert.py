"""`llm-router convert`: one model, another format.

- GGUF -> HF safetensors folder: transformers reads the GGUF and dequantizes it
  (`GgufConfig(dequantize=True)`, without which `save_pretrained` refuses), then saves the
  model, tokenizer and chat template. Needs the `hf` extra and `accelerate`.
- HF safetensors folder -> GGUF (f16, bf16 or f32): our own writer on gguf-py, for the
  architectures `hf_gguf` knows (llama); see that module.
- HF (or GGUF, through HF) -> ONNX: text-generation models through onnxruntime-genai's model
  builder (a subprocess; fp32, int8 or int4; CPU), giving a folder the onnxruntime-genai
  engine serves; sentence-transformers / encoder models through `torch.onnx`, giving a folder
  the onnxruntime embedding engine serves (tokenizer and pooling config copied beside it).

Every output is written to a temporary sibling and renamed into place when complete. Blocks
for the whole conversion (seconds for a 135M model, about a minute for Gemma 3 270M)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidModelFile
from ..formats.detect import Detected, detect
from ..formats.gguf import read_gguf_info
from ..formats.hf import read_json, transformer_dir
from .common import ConversionError, Progress, staged_output
from .hf_gguf import hf_to_gguf

__all__ = ["ONNX_PRECISIONS", "convert", "converter_version"]

ONNX_PRECISIONS = ("fp32", "int8", "int4")
# Files an embedding folder needs beside model.onnx (tokenizer, pooling, limits).
_EMBED_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_BACKENDS = ("transformers", "torch", "onnxruntime-genai", "onnxruntime", "gguf")


def _quiet(message: str) -> None:
    return None


def converter_version() -> str:
    """Identifies what a conversion's output depends on besides its input: the versions of
    the libraries that do the work (for caches of converted models)."""
    parts = []
    for name in _BACKENDS:
        try:
            parts.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name}=none")
    return ";".join(parts)


def convert(
    src: Path,
    to: Literal["hf", "onnx", "gguf"],
    out: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    precision: str = "int8",
    dtype: str = "float32",
    outtype: str = "f16",
) -> Path:
    """Convert the model at `src` to format `to` at `out` and return `out`. `precision`
    (fp32 | int8 | int4) applies to ONNX text models, `dtype` (float32 | bfloat16) to the
    weights of an HF folder made from a GGUF, `outtype` (f16 | bf16 | f32) to a GGUF made
    from an HF folder. Raises OutputExists when `out` exists and not `force`,
    ConversionError (with the reason) when the conversion is impossible or fails."""
    report = progress or _quiet
    found = _detect(src)
    if to == "hf":
        if found.format != "gguf":
            raise ConversionError(f"{src}: --to hf converts GGUF files; this is {found.format}")
        with staged_output(out, force=force, folder=True) as stage:
            _gguf_to_hf(src, stage, dtype, report)
        return out
    if to == "gguf":
        return _to_gguf(found, out, force, outtype, report)
    if to != "onnx":
        raise ConversionError(f"unknown target format {to!r}: hf, onnx or gguf")
    if precision not in ONNX_PRECISIONS:
        raise ConversionError(f"precision {precision!r} is not one of {', '.join(ONNX_PRECISIONS)}")
    if found.format == "gguf":
        with tempfile.TemporaryDirectory(prefix="llm-router-convert-") as scratch:
            hf_dir = Path(scratch) / "hf"
            hf_dir.mkdir()
            _gguf_to_hf(src, hf_dir, "float32", report)
            return convert(hf_dir, "onnx", out, force=force, progress=progress, precision=precision)
    if found.format != "hf":
        raise ConversionError(
            f"{src}: --to onnx converts HF folders or GGUF; this is {found.format}"
        )
    with staged_output(out, force=force, folder=True) as stage:
        if found.task == "embed":
            _export_encoder(src, stage, report)
        else:
            _build_genai(src, stage, precision, report)
    return out


def _to_gguf(found: Detected, out: Path, force: bool, outtype: str, report: Progress) -> Path:
    if found.format != "hf":
        hint = " (to change a GGUF's type, use quantize)" if found.format == "gguf" else ""
        raise ConversionError(
            f"{found.path}: --to gguf converts HF folders; this is {found.format}{hint}"
        )
    with staged_output(out, force=force, folder=False) as stage:
        hf_to_gguf(found.path, stage, outtype, report)
    return out


def _detect(src: Path) -> Detected:
    """What `src` is, its header checked as the server checks it (a truncated GGUF got
    transformers' raw reshape error)."""
    if not src.exists():
        raise ConversionError(f"{src}: no such file or folder")
    try:
        found = detect(src)
        if found is not None and found.format == "gguf":
            read_gguf_info(src)
    except InvalidModelFile as exc:
        raise ConversionError(exc.message) from exc
    if found is None:
        raise ConversionError(f"{src}: not a model this tool knows (GGUF or an HF folder)")
    return found


def _gguf_to_hf(src: Path, stage: Path, dtype: str, report: Progress) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise ConversionError(
            f"converting GGUF needs transformers, torch and accelerate: "
            f"pip install 'llm-runner-router[hf]' ({exc})"
        ) from exc
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ConversionError(f"dtype {dtype!r} is not float32 or bfloat16")
    report(f"reading the tokenizer of {src.name}")
    where: dict[str, Any] = {"gguf_file": src.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), **where)
        report(f"dequantizing {src.name} to {dtype}")
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent),
            dtype=torch_dtype,
            quantization_config=GgufConfig(dequantize=True),
            **where,
        )
        report(f"saving safetensors to {stage.name}")
        model.save_pretrained(str(stage))
        tokenizer.save_pretrained(str(stage))
    except (ValueError, OSError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise ConversionError(f"transformers could not convert {src}: {exc}") from exc
    _keep_finetune(src, stage / "config.json")
    for path in stage.rglob("*"):  # save_pretrained writes some files 0600
        if path.is_file():
            path.chmod(0o644)


def _keep_finetune(src: Path, config: Path) -> None:
    """Copy the GGUF's `general.finetune` ("it", "Instruct"...) into config.json as
    `finetune`, which transformers drops: it is what tells an instruction-tuned file without
    a chat template from a base one (`template_for`), so the HF folder gets the template the
    GGUF would."""
    finetune = read_gguf_info(src).finetune
    if finetune:
        data = read_json(config)
        data["finetune"] = finetune
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_genai(src: Path, stage: Path, precision: str, report: Progress) -> None:
    """onnxruntime-genai's model builder, in a subprocess (its memory comes back at exit),
    through `genai_builder`, which hands it configs in the form it reads."""
    with tempfile.TemporaryDirectory(prefix="llm-router-genai-") as cache:
        cmd = [
            sys.executable,
            "-m",
            "llm_router.tools.genai_builder",
            "-i",
            str(src),
            "-o",
            str(stage),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            cache,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        report(f"building {precision} ONNX with onnxruntime-genai")
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors="replace",
        ) as proc:
            tail: list[str] = []
            assert proc.stdout is not None
            for raw in proc.stdout:
                for line in raw.replace("\r", "\n").splitlines():
                    line = line.strip()
                    if line and not line.startswith("Saving model.") and "it/s]" not in line:
                        tail = [*tail[-19:], line]
                        report(line)
            code = proc.wait()
    if code != 0 or not (stage / "genai_config.json").is_file():
        details = "\n".join(tail[-8:])
        if "onnx_ir" in details:
            details += "\n(the builder needs `onnx_ir`: pip install 'llm-runner-router[onnx]')"
        raise ConversionError(f"the onnxruntime-genai builder failed (exit {code}):\n{details}")


class _Encoder:
    """`torch.onnx` wants positional tensors and one output: the token states."""

    def __init__(self, model: Any) -> None:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, ids: Any, mask: Any, types: Any) -> Any:
                return self.model(
                    input_ids=ids, attention_mask=mask, token_type_ids=types
                ).last_hidden_state

        self.module = Wrapped().eval()


def _export_encoder(src: Path, stage: Path, report: Progress) -> None:
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ConversionError(f"exporting to ONNX needs torch and transformers ({exc})") from exc
    model_dir = transformer_dir(src)
    report(f"loading {src.name} with transformers")
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ConversionError(f"transformers could not load {src}: {exc}") from exc
    sample = tokenizer(
        ["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="pt"
    )
    types = sample.get("token_type_ids")
    if types is None:
        types = torch.zeros_like(sample["input_ids"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    report("exporting the encoder with torch.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript and takes 5x longer here; both give the same vectors (cosine 1.0). It
        # warns about its own deprecation, about shape checks the tracer freezes and about
        # indexing with negative indices; none applies to these encoders, which the tests
        # check by comparing the export with torch on other lengths and batch sizes.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _Encoder(model).module,
                (sample["input_ids"], sample["attention_mask"], types),
                str(stage / "model.onnx"),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ConversionError(f"torch.onnx could not export {src}: {exc}") from exc
    for name in _EMBED_FILES:
        for folder in (src, model_dir):
            if (folder / name).is_file() and not (stage / name).exists():
                shutil.copy2(folder / name, stage / name)
    for pooling in src.glob("*_Pooling"):
        shutil.copytree(pooling, stage / pooling.name)
    for normalize in src.glob("*_Normalize"):
        shutil.copytree(normalize, stage / normalize.name)
