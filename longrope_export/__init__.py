"""longrope-export: carry LongRoPE factors into every runtime, and check that they arrived."""

__version__ = "0.1.0"

from .errors import CheckFailed, InputError, LongRoPEExportError, RuntimeUnavailable
from .spec import LongRoPESpec

__all__ = ["CheckFailed", "InputError", "LongRoPEExportError", "LongRoPESpec", "RuntimeUnavailable",
           "__version__", "load_model"]


def load_model(path, **kwargs):  # type: ignore[no-untyped-def]
    """Load a baked checkpoint with a rotary embedding that honours the start-token threshold.

    Example:
        >>> model = load_model("llama-longrope")  # doctest: +SKIP
    """
    from .hf_loader import load_model as _load

    return _load(path, **kwargs)
