"""The engine's errors: those that end a run or refuse its input, and the wording of any failure for the user.
No UI here. ConfigError stays in trainer/fields.py as the preset's own error; ImageTooLarge and WildcardError stay
with their modules (images, wildcards): the engine turns them into a skipped file's reason or an InputError."""
from __future__ import annotations

import errno
import re

from trainer.fields import ConfigError

ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


class InputError(ValueError):
    """Bad preset or input (missing model, empty concept...): the CLI exits 2 with this message.

    `refusal` names a refusal the window can resolve by asking the user (see events.RunFinished.refusal)."""

    def __init__(self, message: str, refusal: str = ""):
        super().__init__(message)
        self.refusal = refusal


class ModelLoadError(ValueError):
    """A base model that cannot be loaded; the message names the path and the problem (exit 2, as bad input)."""


class CacheError(RuntimeError):
    """A cache file that went bad after it was checked (changed on disk during training)."""


class RunFailure(RuntimeError):
    """The run failed for a known reason (a NaN loss, a final save that could not be written): the message says
    what happened and what to do, and no traceback is shown (the CLI exits 1)."""


class NonFiniteLoss(RunFailure, FloatingPointError):
    """The loss became NaN or infinite more often than training.skip_nan_steps allows."""


class FinalSaveFailed(RunFailure):
    """The final model could not be written; the message says where the trained state was kept instead."""


# ---- the wording of failures ----------------------------------------------------------------------------

def plain_text(text: str) -> str:
    """`text` without terminal escape sequences (colours, bold: torch and other libraries put them in their
    error messages), which would show as raw codes in the window and in log files."""
    return ANSI_ESCAPE.sub("", text)


def is_run_failure(error: BaseException) -> bool:
    """A failure of the run, not a bug: RunFailure, out of memory, or a full disk. Shown without a traceback."""
    full_disk = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RunFailure) or full_disk or "out of memory" in str(error).lower()


def describe_failure(error: BaseException) -> str:
    """A one-paragraph message for a failed run, with advice where the cause is known."""
    text = plain_text(str(error)) or type(error).__name__
    if "out of memory" in text.lower():
        return (f"Out of GPU memory: {text.splitlines()[0]}. Try a smaller batch size, gradient checkpointing, "
                "the 8-bit AdamW optimizer, a lower resolution, or the low-VRAM preset.")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({error.filename})" if error.filename else ""
        return (f"The disk is full{where}: {text.splitlines()[0]}. Free some space or move the workspace "
                "(general.workspace_dir) to a bigger disk, then resume from the last backup (--resume latest): "
                "it is intact.")
    return text


def is_input_error(error: BaseException) -> bool:
    """Preset and input problems (exit 2) as opposed to failures of the training itself (exit 1)."""
    return isinstance(error, (InputError, ConfigError, ModelLoadError))
