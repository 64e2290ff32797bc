"""Typed events (worker -> window) and commands (window -> worker): plain, picklable data. No UI here."""
from __future__ import annotations

from dataclasses import dataclass


# ---- events: the training worker puts these on the session's queue -------------------------

@dataclass(frozen=True)
class RunStarted:
    workspace: str
    total_steps: int
    total_epochs: int
    device: str


@dataclass(frozen=True)
class Status:
    """What the worker is doing now (loading model, caching, training, sampling, saving...)."""
    text: str


@dataclass(frozen=True)
class Progress:
    """One optimizer step done. `step` counts from 1; `epoch` from 0."""
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    epoch_step: int
    epoch_steps: int
    loss: float
    smooth_loss: float
    lr: float
    it_per_s: float
    eta_s: float
    vram_gib: float | None = None


@dataclass(frozen=True)
class ValidationLoss:
    """The loss on the validation images (concept role validation, never trained on) after `step` optimizer
    steps (0: before the first), with fixed noise and timesteps, so points of one run compare (train/validation.py).
    `epoch`: Position.epoch_number; `images`: how many images it was measured on."""
    step: int
    epoch: int
    loss: float
    images: int


@dataclass(frozen=True)
class SampleReady:
    path: str
    prompt_index: int
    prompt: str
    step: int
    epoch: int


@dataclass(frozen=True)
class CheckpointWritten:
    """A backup (full state) or a save (model only) finished writing."""
    kind: str  # "backup" | "save" | "final"
    path: str
    step: int


@dataclass(frozen=True)
class Log:
    level: str  # "info" | "warning" | "error"
    text: str


@dataclass(frozen=True)
class RunFinished:
    """Sent exactly once per run, from a `finally`."""
    outcome: str  # "completed" | "stopped" | "failed"
    message: str = ""
    output_path: str | None = None
    step: int = 0
    bad_input: bool = False  # the preset or an input was at fault (CLI exit code 2), not the training
    # Set when the run refused to start because it needs the user's choice (the window asks, then starts again):
    # "earlier_run": the workspace holds an earlier run (continue it, or start over with fresh=True);
    # "data_changed": resuming, but the concepts' files changed since the backup (allow_changed_data=True).
    refusal: str = ""


# ---- tool events (generate-data, compare): same queue, Status, Log and one RunFinished as above ---------

@dataclass(frozen=True)
class ImageGenerated:
    """generate-data wrote (or, resuming, found) one image and its caption. `done` counts from 1 to `total`.
    caption (trainer.tools.captioning) uses it too: `path` is a captioned image and `caption` the text its caption
    file now holds (a preview: the text proposed); skipped: the image was left without a new caption."""
    path: str
    caption: str
    done: int
    total: int
    skipped: bool = False  # already there from an earlier run


@dataclass(frozen=True)
class GridStarted:
    """compare: the grid's shape, before any cell. Cells arrive as GridCell events in any order."""
    row_labels: tuple[str, ...]
    column_labels: tuple[str, ...]
    output_png: str


@dataclass(frozen=True)
class GridCell:
    path: str
    row: int
    column: int
    done: int
    total: int


# ---- queue events (trainer/tools/queue_runner.py): each run's training events as above but its RunFinished, these
# between them, and one RunFinished for the whole queue ---------------------------------------------------------

@dataclass(frozen=True)
class QueueRunState:
    """A run of a queue changed state (and, as a queue starts or its file changes, each run's state in order).
    status: pending, running, completed, failed or stopped; final_loss: the smoothed training loss at its last step
    and validation_loss its last validation loss (None before any); model: what it wrote; workspace: its own."""
    name: str
    status: str
    message: str = ""
    final_loss: float | None = None
    model: str = ""
    workspace: str = ""
    validation_loss: float | None = None


Event = (RunStarted | Status | Progress | ValidationLoss | SampleReady | CheckpointWritten | Log | RunFinished |
         ImageGenerated | GridStarted | GridCell | QueueRunState)


# ---- commands: the window sends these; the worker checks them at optimizer-step boundaries -----

@dataclass(frozen=True)
class Command:
    name: str  # one of COMMANDS


STOP = "stop"
SAMPLE_NOW = "sample_now"
BACKUP_NOW = "backup_now"
SAVE_NOW = "save_now"
COMMANDS = (STOP, SAMPLE_NOW, BACKUP_NOW, SAVE_NOW)
