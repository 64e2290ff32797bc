"""What a .ckpt may hold besides tensors: the harmless bookkeeping of training checkpoints that A1111 and ComfyUI
also allow, for torch's weights_only loader; and torch's refusal put in a line for the user. No UI here."""
from __future__ import annotations

from trainer.errors import plain_text


class _LightningModelCheckpoint:
    """Inert stand-in for the PyTorch Lightning checkpoint callback pickled into training checkpoints: its
    saved attributes land in an object with no methods, as in ComfyUI's loader; Lightning is never imported."""


NUMPY_NUMBER_TYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "LongLong", "UInt8", "UInt16", "UInt32", "UInt64",
                      "ULongLong", "Float16", "Float32", "Float64")
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")  # not for our users


def checkpoint_safe_globals() -> list:
    """The globals beyond torch's weights_only defaults that A1111 (modules/safe.py) and ComfyUI (comfy/utils.py)
    allow in SD checkpoints: Lightning's ModelCheckpoint (as an inert stand-in), numpy scalars and dtypes
    (under numpy 1 and 2 module names) and `_codecs.encode` (bytes in protocol-2 pickles). All rebuild data only."""
    import _codecs

    import numpy
    from numpy import dtypes  # numpy >= 1.25 rebuilds a dtype through its class, e.g. Float64DType
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:
        from numpy.core.multiarray import scalar

    number_dtypes = [getattr(dtypes, f"{name}DType") for name in NUMPY_NUMBER_TYPES
                     if hasattr(dtypes, f"{name}DType")]
    return [(_LightningModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
            (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            numpy.dtype, *number_dtypes, _codecs.encode]


def pickle_refusal_detail(error: BaseException) -> str:
    """The line of torch's weights_only refusal that says what was refused, without escape codes, nor torch's
    advice to load with weights_only=False."""
    lines = [line.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip()
             for line in plain_text(str(error)).splitlines()]
    lines = [line for line in lines if line and not line.startswith(TORCH_ADVICE) and "weights_only" not in line]
    return (lines or [type(error).__name__])[0]
