"""The results tab: compare a run's samples across steps or epochs, or models side by side, as a labelled grid; or
a queue's runs (a sweep) side by side from their sample images (app/sweep_picker.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import customtkinter as ctk

from app.grid_view import GridView
from app.sweep_picker import SweepPicker
from app.tabs.common import ListEditor
from app.tabs.tool_base import ToolTab
from app.widgets import MUTED, Group, Tooltip, reconfigure
from trainer import events as ev
from trainer.specs import CompareModel, CompareSpec

SAMPLES_FIELDS = ("samples_dir", "columns", "max_columns")
MODEL_FIELDS = ("lora_strengths", "base_config", "device", "dtype")


def free_name(path: Path) -> Path:
    """The first of NAME-2.png, NAME-3.png, … beside `path` that does not exist."""
    n = 2
    while path.with_name(f"{path.stem}-{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}-{n}{path.suffix}")


class ModelsEditor(ListEditor):
    """The models list: a model's path a little narrower than ListEditor's, to leave room for its LoRA's."""

    WIDTHS = {**ListEditor.WIDTHS, "path": 360, "label": 140, "lora": 300}


class ResultsTab(ToolTab):
    title = "results"
    spec_cls = CompareSpec
    what = "compare"
    tool_name = "A comparison"
    start_text = "Run"
    start_tip = "Build the grid as set here and export it as one PNG (a copy: edits made now apply to the next run)."
    prefills = {"samples_dir": lambda preset: preset.general.workspace_dir,
                "output_png": lambda preset: str(Path(preset.general.workspace_dir) / "compare.png")}

    # ---- building ---------------------------------------------------------------------------------

    def steps(self):
        f = self.frame
        f.grid_columnconfigure(0, weight=1)
        f.grid_rowconfigure(1, weight=1)
        self.build_toolbar()
        area = self.build_split(form_height=200)
        area.grid_columnconfigure((0, 1), weight=1, uniform="results")
        self.grid_view = GridView(self.paned, on_layout=self.fit_grid)
        self.add_lower(self.grid_view, minsize=160)
        self.paned.paneconfigure(self.top_pane, stretch="never")  # a taller window gives the grid the room
        Tooltip(self.grid_view.title, "Drag the bar above to give the grid more room. Click a cell to see it large; "
                                      "the arrow keys then step through the grid.")
        self._build_settings(area)
        yield
        self._build_models(area)
        self._build_prompts(area)
        self.sweep_picker = SweepPicker(area, self.grid_view, self.show_message,
                                        lambda current: self.window.dialogs.ask_open_spec("queue"),
                                        lambda: str(self.window.tabs["queue"].path))
        self.sweep_picker.grid(row=3, column=0, columnspan=2, sticky="ew", padx=6, pady=6)
        self.prefill()
        self.show_source()
        self.validate_now()
        yield

    def _build_settings(self, area) -> None:
        compare = Group(area, "Compare")
        compare.grid(row=0, column=0, sticky="nsew", padx=6, pady=6)
        self.field_rows = {name: self.spec_form.field(compare, name)
                           for name in ("source",) + SAMPLES_FIELDS + MODEL_FIELDS}
        compare.pad_bottom()
        export = Group(area, "Export")
        export.grid(row=0, column=1, sticky="nsew", padx=6, pady=6)
        for name in ("cell_size", "output_png", "replace_output"):
            self.field_rows[name] = self.spec_form.field(export, name)
        export.pad_bottom()

    def _build_models(self, area) -> None:
        self.models_group = group = Group(area, "Models (a column each; with a LoRA, a column per LoRA strength)")
        group.grid(row=1, column=0, columnspan=2, sticky="ew", padx=6, pady=6)
        quick = ctk.CTkFrame(group, fg_color="transparent")
        quick.grid(row=group.take_row(), column=0, columnspan=2, sticky="w", padx=10, pady=(0, 4))
        self.add_base_button = ctk.CTkButton(quick, text="+ The preset's base model", width=190,
                                             command=lambda: self.add_model("base"))
        self.add_trained_button = ctk.CTkButton(quick, text="+ The preset's trained model", width=210,
                                                command=lambda: self.add_model("trained"))
        self.add_base_button.grid(row=0, column=0, padx=(0, 8))
        self.add_trained_button.grid(row=0, column=1)
        Tooltip(self.add_base_button, "Add the model this preset trains from (model tab: base model).")
        Tooltip(self.add_trained_button, "Add the model this preset writes when training completes (model tab: "
                                         "output).")
        self.models_editor = ModelsEditor(group, self.spec_form, "models", add_text="+ Add model")
        self.spec_editors.append(self.models_editor)
        self.models_editor.grid(row=group.take_row(), column=0, columnspan=2, sticky="ew", padx=8, pady=(0, 10))

    def _build_prompts(self, area) -> None:
        self.prompts_group = group = Group(area, "Prompts and seeds (a row per prompt and seed)")
        group.grid(row=2, column=0, columnspan=2, sticky="ew", padx=6, pady=6)
        group.grid_columnconfigure(1, weight=0)
        self.field_rows["seeds"] = self.spec_form.field(group, "seeds")
        self.seeds_hint = ctk.CTkLabel(group, text="Comma-separated, e.g. 1, 2, 3; empty uses each prompt's own "
                                                   "seed.", text_color=MUTED, anchor="w")
        self.seeds_hint.grid(row=group.take_row(), column=1, sticky="w", padx=(0, 12))  # a row below the seeds
        row = group.take_row()
        self.copy_prompts_button = ctk.CTkButton(group, text="Copy the preset's sample prompts", width=240,
                                                 command=self.copy_prompts)
        self.copy_prompts_button.grid(row=row, column=0, columnspan=2, sticky="w", padx=10, pady=(6, 4))
        Tooltip(self.copy_prompts_button, "Replace the prompts below with the sampling tab's prompts.")
        self.prompts_editor = self.add_editor(group, "prompts", "+ Add prompt")
        self.prompts_editor.grid(row=group.take_row(), column=0, columnspan=2, sticky="ew", padx=8, pady=(0, 10))

    # ---- what applies to the chosen source ----------------------------------------------------------

    def show_source(self) -> None:
        """Samples: the run folder and its columns; models: the model list, prompts and seeds."""
        if not hasattr(self, "prompts_group"):
            return
        models = self.spec.source == "models"
        for name in SAMPLES_FIELDS:
            self.field_rows[name].labelled.set_visible(not models)
        for name in MODEL_FIELDS:
            self.field_rows[name].labelled.set_visible(models)
        for group in (self.models_group, self.prompts_group):
            group.grid() if models else group.grid_remove()
        self.fit_panes(form=420 if models else 280)  # the lists of models and prompts need room; the sweep's row

    def _spec_changed(self, path: str) -> None:
        if path == "source":
            self.show_source()
        super()._spec_changed(path)

    def spec_loaded(self) -> None:
        self.show_source()

    # ---- filling the lists from the preset ----------------------------------------------------------

    def add_model(self, which: str) -> None:
        """Add the preset's base model ("base") or its trained output ("trained") to the model list: a LoRA run's
        output is its base model with the LoRA; an embedding is no model (the bottom bar says to compare its
        samples)."""
        model, method = self.window.preset.model, self.window.preset.training.method
        if which == "trained" and method == "embedding":
            self.window.bottom.show_message("An embedding is a word, not a model: compare its samples (source "
                                            "samples, the run's folder) to see it learn.", "warning")
            return
        if which == "trained" and method == "lora":
            entry = CompareModel(path=model.base_model, label="trained", lora=model.output_path)
        else:
            entry = CompareModel(path=model.base_model if which == "base" else model.output_path, label=which)
        self.spec.models.append(entry)
        self.models_editor.rebuild()
        self.spec_form.on_change("models")

    def copy_prompts(self) -> None:
        self.spec.prompts = copy.deepcopy(self.window.preset.sampling.prompts)
        self.prompts_editor.rebuild()
        self.spec_form.on_change("prompts")

    # ---- running ------------------------------------------------------------------------------------

    def make_session(self, spec):
        from trainer.session import compare_session
        return compare_session(spec, process=spec.source == "models")  # models: torch loads in a child process

    def uses_device(self, spec: CompareSpec) -> bool:
        return spec.source == "models"  # sample files are only read: that may run beside a training

    def path_problems(self, spec: CompareSpec) -> list[str]:
        if spec.source == "samples":
            folder = Path(spec.samples_dir).expanduser()
            return [] if folder.is_dir() else [f"samples_dir: {spec.samples_dir or '(empty)'} is not a folder"]
        problems = []
        for i, model in enumerate(spec.models):
            if not model.path.strip():
                problems.append(f"models.{i}.path: choose a model")
            elif not Path(model.path).expanduser().exists():
                problems.append(f"models.{i}.path: {model.path} does not exist")
            lora = model.lora.strip()
            if lora and not Path(lora).expanduser().is_file():
                what = "is a folder" if Path(lora).expanduser().is_dir() else "does not exist"
                problems.append(f"models.{i}.lora: {lora} {what} (choose a LoRA .safetensors file)")
        if spec.base_config and not Path(spec.base_config).expanduser().is_dir():
            problems.append(f"base_config: {spec.base_config} is not a folder")
        return problems

    def validate_now(self) -> list[str]:
        reasons = super().validate_now()
        self.show_lora_strengths()
        return reasons

    def show_lora_strengths(self) -> None:
        """A model's LoRA strength is editable (and not greyed) only where it applies: the model has a LoRA and
        no LoRA strengths are set (they replace it); or when its value is wrong, so that it can be mended."""
        for i, model in enumerate(self.spec.models):
            bindings = self.spec_form.bindings_for(f"models.{i}.lora_strength")
            if not bindings:  # the rows are being rebuilt
                continue
            on = bool(model.lora.strip()) and not self.spec.lora_strengths or bindings[0].reason is not None
            reconfigure(bindings[0].widget, state="normal" if on else "disabled",
                        text_color=ctk.ThemeManager.theme["CTkEntry"]["text_color"] if on else MUTED)

    def fit_grid(self) -> None:
        """Give the grid the height that shows all its rows, up to all but the form's least (see fit_panes); on a
        tab not laid out yet, once it is."""
        if self.paned.winfo_height() <= 1:
            self.paned.bind("<Configure>", lambda _e: (self.paned.unbind("<Configure>"), self.fit_grid()))
            return
        self.fit_panes(lower=self.grid_view.wanted_height() + int(self.paned.cget("sashwidth")))

    def start(self) -> bool:
        """Run the comparison. When its file exists (and "Replace the file" is off) ask first: replace it for
        this run, export to a free name beside it (shown in Export to), or cancel (False)."""
        out = Path(self.spec.output_png).expanduser()
        if self.runner.running or self.validate_now() or self.spec.replace_output or not out.exists():
            return super().start()
        beside = free_name(out)
        answer = self.window.dialogs.choose("Replace the grid?", f"{out} already exists.",
                                            [f"Replace {out.name}", f"Save as {beside.name}"])
        if answer is None:
            return False
        if answer.startswith("Save as"):
            self.spec.output_png = str(beside)
            self.spec_form.refresh("output_png")
            return super().start()
        self.spec.replace_output = True  # for this run only: the session runs a copy of the spec
        try:
            return super().start()
        finally:
            self.spec.replace_output = False

    def on_start(self) -> None:
        self.grid_view.clear()

    def on_event(self, event) -> None:
        if isinstance(event, ev.GridStarted):
            self.grid_view.layout(event.row_labels, event.column_labels)
            self.show_count(0, len(event.row_labels) * len(event.column_labels))
        elif isinstance(event, ev.GridCell):
            self.grid_view.set_cell(event.row, event.column, event.path)
            self.show_count(event.done, event.total)

    def on_finish(self, event: ev.RunFinished) -> None:
        if event.outcome == "completed" and event.output_path:
            self.grid_view.title.configure(text=f"{self.grid_view.title.cget('text')}   ·   exported to "
                                                f"{event.output_path}")
