"""Third-party messages that mislead a user of this package, silenced once at start-up (``cli.py``).

Each entry says why it is wrong *here*; everything else from the libraries still shows.

- bitsandbytes "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels": the
  optional ``kernels`` package would download a kernel from the hub; without it bitsandbytes uses its own
  CPU code, which is what runs (and what the 4-bit tests exercise).
- transformers "Loading a GGUF checkpoint with its weights packed is fastest in float32 ...": SmolLM2's GGUF
  is dequantised to dense layers on load (``models.py``), nothing stays packed, so the advice does not apply.
- Lightning's litlogger / litmodels tips: adverts for cloud services, printed on every run.
- Lightning "LightningCLI's args parameter ... not recommended": ``cli.py`` passes ``sys.argv`` on purpose
  (``BTPCLI.parse_arguments`` does not emit it at all).
- Lightning's ``isinstance(treespec, LeafSpec)`` deprecation: Lightning's code, not fixable here.
"""

from __future__ import annotations

import logging
import warnings

_DROPPED_LOGS = {
    "bitsandbytes.backends.cpu.ops": ("gemm_4bit_forward from kernels-community",),
    "transformers.quantizers.quantizer_gguf": ("weights packed is fastest in float32",),
    "lightning.pytorch.utilities.rank_zero": ("litlogger", "litmodels"),
}
_IGNORED_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*", r"LightningCLI's args parameter.*")


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(fragment in text for fragment in self.fragments)


def quiet_third_party() -> None:
    """Install the filters (idempotent); call before the libraries are imported so import-time logs are caught."""
    for name, fragments in _DROPPED_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
