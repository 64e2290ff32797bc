"""The training tab: the method first (full fine-tune, LoRA or embedding) with its LoRA and embedding settings,
then optimizer and learning rate, schedule, captions and text encoder, UNet, noise and loss, EMA, precision.
Fields that do not apply to the chosen method, and optimizer settings the chosen optimizer does not read, are
hidden (MethodFields; the model tab uses it too)."""
from __future__ import annotations

import tkinter as tk
from collections.abc import Iterator
from typing import ClassVar

from app.form import Form, split_problem
from app.memory_line import MemoryLine
from app.tabs.common import GroupSpec, Tab, scroll_area
from app.timestep_plot import TimestepPlot
from trainer.config import OPTIMIZER_FIELDS, TrainingConfig

LORA = ["lora_type", "lora_rank", "lora_alpha", "lora_conv_rank", "lora_conv_alpha", "lora_dropout"]
EMBEDDING = ["embedding_placeholder", "embedding_vectors", "embedding_init_text", "embedding_learning_rate"]
# what the timestep plot below them shows (app/timestep_plot.py)
TIMESTEP_FIELDS = ["timestep_distribution", "timestep_logit_mean", "timestep_logit_std", "min_timestep",
                   "max_timestep"]

GROUPS = [
    ("Method", ["method"]),
    ("LoRA", LORA),
    ("Embedding", EMBEDDING),
    ("Optimizer", ["optimizer", "learning_rate", "weight_decay", "max_grad_norm", *OPTIMIZER_FIELDS]),
    ("Learning-rate schedule", ["lr_scheduler", "lr_warmup_steps"]),
    ("Length and batch", ["epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "resolution"]),
    ("Captions and text encoder", ["max_token_length", "train_text_encoder", "text_encoder_learning_rate",
                                   "text_encoder_stop_epoch"]),
    ("UNet", ["train_unet", "compile"]),
    ("Noise and loss", ["prediction_type", "noise_offset", "zero_terminal_snr", "min_snr_gamma", "debiased_estimation",
                        "loss_type", "huber_c", "huber_schedule", *TIMESTEP_FIELDS]),
    ("EMA", ["ema", "ema_decay"]),
    ("Precision and memory", ["mixed_precision", "weight_dtype", "stochastic_rounding", "fused_backward",
                              "gradient_checkpointing"]),
]

# The fields that apply to some values of training.method only (what trainer.model.training_model and optim read for
# each method); every other field applies to all three. The embedding fields apply to all three: with full or
# lora a placeholder trains an extra word beside.
METHODS_OF: dict[str, tuple[str, ...]] = {
    # the adapter, the LoRA a run starts from and the merged model written at the end
    **{f"training.{name}": ("lora",) for name in LORA},
    **{f"model.{name}": ("lora",) for name in ("lora_weights", "merged_output_path", "merge_strength")},
    # an embedding run trains the new word alone, at embedding_learning_rate and without weight decay, into one
    # .safetensors file: the UNet's and text encoder's switches and rates and the model format do not apply
    **{f"training.{name}": ("full", "lora") for name in ("learning_rate", "weight_decay", "train_unet",
                                                         "train_text_encoder", "text_encoder_learning_rate",
                                                         "text_encoder_stop_epoch")},
    "model.output_format": ("full", "lora"),  # lora: the merged model's format
    # bfloat16 weights (with stochastic rounding) and the fused back pass are a full fine-tune's: a LoRA's and an
    # embedding's trained weights are few and always float32
    **{f"training.{name}": ("full",) for name in ("weight_dtype", "stochastic_rounding", "fused_backward")},
}


# The optimizer settings and the optimizers that read them (config.OPTIMIZER_FIELDS, what trainer.train.optim passes
# to each); every other field applies to every optimizer.
OPTIMIZERS_OF: dict[str, tuple[str, ...]] = {f"training.{name}": names for name, names in OPTIMIZER_FIELDS.items()}


# The fields that apply to some loss types only (what trainer.train.losses reads for each training.loss_type), and
# to one timestep distribution only.
LOSS_TYPES_OF: dict[str, tuple[str, ...]] = {f"training.{name}": ("huber", "smooth_l1")
                                             for name in ("huber_c", "huber_schedule")}
DISTRIBUTIONS_OF: dict[str, tuple[str, ...]] = {f"training.{name}": ("logit_normal",)
                                                for name in ("timestep_logit_mean", "timestep_logit_std")}

# The training fields that decide what else applies, each with its table: path -> the values it applies for (a path
# not in a table applies for every value).
SWITCHES: dict[str, dict[str, tuple[str, ...]]] = {"method": METHODS_OF, "optimizer": OPTIMIZERS_OF,
                                                   "loss_type": LOSS_TYPES_OF,
                                                   "timestep_distribution": DISTRIBUTIONS_OF}


def applies(path: str, training: TrainingConfig) -> bool:
    """Whether the preset field at dotted `path` matters for the preset's training section `training`: for its
    method, optimizer, loss type and timestep distribution (SWITCHES)."""
    return all(getattr(training, switch) in table.get(path, (getattr(training, switch),))
               for switch, table in SWITCHES.items())


class MethodFields:
    """The labelled fields of one tab's `section` ("training", "model"), shown when they apply to the preset's
    training.method, optimizer, loss_type and timestep_distribution (applies()) and hidden (LabelledField.set_visible)
    when not; a group whose fields are all hidden is hidden as well, and comes back in its place in its column. A
    field with a problem (validation's, or text that does not parse) is always shown: no problem the bottom bar lists
    sits on a field the user cannot see."""

    def __init__(self, form: Form, section: str):
        self.form = form
        self.fields = {b.path: b.labelled for b in form.bindings
                       if b.labelled is not None and b.path and b.path.startswith(section + ".")}
        self.shown = dict.fromkeys(self.fields, True)
        self.groups: dict = {}  # Group -> the paths of its fields
        for path, labelled in self.fields.items():
            self.groups.setdefault(labelled.label.master, []).append(path)
        self.columns: dict = {}  # column frame -> [(group, its pack options)] in the order Columns packed them
        for group in self.groups:
            column = group.master
            if column not in self.columns:
                self.columns[column] = [(g, {k: v for k, v in g.pack_info().items() if k != "in"})
                                        for g in column.pack_slaves()]

    def problem_paths(self) -> set[str]:
        """The paths of every field with a problem now. Without the path checks: of the fields that can be hidden
        only model.lora_weights has one, and hidden (a method other than lora) it has a method problem first."""
        return set(self.form.parse_errors) | {split_problem(p)[0] for p in self.form.problems(check_paths=False)}

    def update(self, hide: bool) -> None:
        """Show what applies to the training switches (SWITCHES) and what has a problem. With `hide` (after a
        change of one of them or a preset load) also hide what no longer applies; without (after any other edit) only a
        hidden field that gained a problem comes back, so no field goes away under the user's hand."""
        training = self.form.preset.training
        if not hide and all(self.shown.values()):
            return
        problems = self.problem_paths()
        for path, labelled in self.fields.items():
            show = applies(path, training) or path in problems
            if show != self.shown[path] and (show or hide):
                labelled.set_visible(show)
                self.shown[path] = show
        for column, groups in self.columns.items():
            wanted = [(g, options) for g, options in groups if self.group_shown(g)]
            if [g for g, _ in wanted] != column.pack_slaves():
                for g, _ in groups:
                    g.pack_forget()
                for g, options in wanted:
                    g.pack(**options)

    def group_shown(self, group) -> bool:
        """A group is shown while any of its fields is (a group with no field of the section always is)."""
        paths = self.groups.get(group)
        return not paths or any(self.shown[p] for p in paths)


class MethodTab(Tab):
    """A tab of grouped fields of `section` where what the training switches (SWITCHES) leave unused is
    hidden (MethodFields)."""

    section = ""
    groups: ClassVar[GroupSpec] = []
    columns = 2

    def __init__(self, window, frame):
        super().__init__(window, frame)
        self.method_fields: MethodFields | None = None

    def steps(self) -> Iterator[None]:
        yield from self.grouped(scroll_area(self.frame), self.section, self.groups, columns=self.columns)
        self.method_fields = MethodFields(self.form, self.section)
        self.method_fields.update(hide=True)

    def reload(self) -> None:
        super().reload()
        if self.method_fields is not None:
            self.method_fields.update(hide=True)

    def field_changed(self, path: str) -> None:
        if self.method_fields is not None:
            self.method_fields.update(hide=path.removeprefix("training.") in SWITCHES)


class TrainingTab(MethodTab):
    """The training tab; below the timestep fields of "Noise and loss", the plot of the distribution they give,
    redrawn at each edit of one of them; below "Precision and memory", the GPU-memory line (app/memory_line.py),
    re-estimated after any edit of the preset while this tab is shown."""

    title = "training"
    section = "training"
    groups = GROUPS
    columns = 3
    timestep_plot: TimestepPlot | None = None
    memory_line: MemoryLine | None = None

    def steps(self) -> Iterator[None]:
        yield from super().steps()
        group = next(b.labelled for b in self.form.bindings_for("training.max_timestep")
                     if b.labelled is not None).label.master
        self.timestep_plot = TimestepPlot(group)
        self.timestep_plot.grid(row=group.take_row(), column=0, columnspan=2, sticky="ew", padx=12, pady=(8, 0))
        self.timestep_plot.show(self.form.preset.training)
        group = next(b.labelled for b in self.form.bindings_for("training.gradient_checkpointing")
                     if b.labelled is not None).label.master
        self.memory_line = MemoryLine(group, self.form, lambda *a, **kw: self.window.dialogs.choose(*a, **kw),
                                      shown=lambda: self.window.tabview.get() == self.title,
                                      busy=self.window.device_busy)
        self.memory_line.grid(row=group.take_row(), column=0, columnspan=2, sticky="ew", padx=12, pady=(8, 0))
        # the tab's frame is gridded when the tab is shown: an estimate that edits elsewhere made stale runs then
        tk.Misc.bind(self.frame, "<Map>", lambda _e: self.memory_line.changed(), "+")
        self.memory_line.changed()

    def reload(self) -> None:
        super().reload()
        if self.timestep_plot is not None:
            self.timestep_plot.show(self.form.preset.training)
        if self.memory_line is not None:
            self.memory_line.changed()

    def field_changed(self, path: str) -> None:
        super().field_changed(path)
        if self.timestep_plot is not None and path.removeprefix("training.") in TIMESTEP_FIELDS:
            self.timestep_plot.show(self.form.preset.training)
        if self.memory_line is not None:
            self.memory_line.changed()

    def jobs_changed(self) -> None:
        if self.memory_line is not None:  # a training that held the device ended: estimate what it held up
            self.memory_line.refresh()

    def closing(self) -> None:
        if self.memory_line is not None:
            self.memory_line.close()
