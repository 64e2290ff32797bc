"""The SeaChange window: top bar (presets, load, save), the tabs, the bottom bar; runs trainings via Runner."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path
from typing import Callable

import customtkinter as ctk

from app.bottom_bar import BottomBar
from app.form import Form, describe_problem
from app.recent import DEFAULT_PRESET, PRESETS_DIR, RecentFiles, builtin_presets, is_builtin
from app.runner import Runner
from app.tabs.backup import BackupTab
from app.tabs.concepts import ConceptsTab
from app.tabs.general import GeneralTab
from app.tabs.model import ModelTab
from app.tabs.run import RunTab
from app.tabs.sampling import SamplingTab
from app.tabs.training import TrainingTab
from app.widgets import MUTED, WARNING, Tabview, Tooltip
from trainer.config import ConfigError, Preset, load_preset, preset_to_dict, save_preset

TAB_CLASSES = (GeneralTab, ModelTab, ConceptsTab, TrainingTab, SamplingTab, BackupTab, RunTab)
PRESET_TYPES = [("SeaChange presets", "*.json"), ("All files", "*")]


class Dialogs:
    """Every question the window asks the user. Tests pass their own object with the same methods."""

    def __init__(self, parent: tk.Misc):
        self.parent = parent

    def confirm(self, title: str, message: str) -> bool:
        from tkinter import messagebox
        return bool(messagebox.askyesno(title, message, parent=self.parent))

    def ask_open_preset(self) -> str | None:
        from tkinter import filedialog
        return filedialog.askopenfilename(parent=self.parent, title="Load preset", filetypes=PRESET_TYPES) or None

    def ask_save_preset(self) -> str | None:
        from tkinter import filedialog
        return filedialog.asksaveasfilename(parent=self.parent, title="Save preset as", defaultextension=".json",
                                            filetypes=PRESET_TYPES) or None

    def browse(self, kind: str, name: str, current: str) -> str | None:
        """A path picker's Browse…: a folder, a file, or (kind "path") a model file or diffusers folder."""
        from tkinter import filedialog
        start = Path(current).expanduser() if current else Path.cwd()
        folder = str(start if start.is_dir() else start.parent if start.parent.is_dir() else Path.cwd())
        if kind == "dir":
            return filedialog.askdirectory(parent=self.parent, initialdir=folder, mustexist=False) or None
        if name.startswith("output"):
            return filedialog.asksaveasfilename(parent=self.parent, initialdir=folder, title="Write the model to",
                                                filetypes=[("Single file", "*.safetensors"), ("All", "*")]) or None
        types = [("Models", "*.safetensors *.ckpt model_index.json"), ("All files", "*")] if kind == "path" \
            else [("All files", "*")]
        chosen = filedialog.askopenfilename(parent=self.parent, initialdir=folder, filetypes=types,
                                            title="Choose a .safetensors or .ckpt file, or the model_index.json "
                                                  "of a diffusers folder" if kind == "path" else "Choose a file")
        if chosen and Path(chosen).name == "model_index.json":
            return str(Path(chosen).parent)
        return chosen or None


def default_session_factory(preset):
    from trainer.session import TrainingSession  # cheap: the session imports the engine in its thread
    return TrainingSession(preset)


class Window(ctk.CTk):
    """The main window. `session_factory(preset)` makes the session (tests pass a fake); `dialogs` asks the
    user (tests pass a stub); `lazy` builds the tabs after the first paint, a slice per Tk tick."""

    def __init__(self, preset_path: str | Path | None = None, *, preset: Preset | None = None,
                 session_factory: Callable | None = None, dialogs=None, recent: RecentFiles | None = None,
                 presets_dir: Path = PRESETS_DIR, lazy: bool = True):
        ctk.set_appearance_mode("dark")
        ctk.set_default_color_theme("blue")
        super().__init__()
        self.title("SeaChange")
        width, height = min(1360, self.winfo_screenwidth()), min(880, self.winfo_screenheight() - 40)
        self.geometry(f"{width}x{height}")
        self.minsize(980, 620)
        self.dialogs = dialogs or Dialogs(self)
        self.recent = recent or RecentFiles()
        self.presets_dir = presets_dir
        self.preset_path: Path | None = None
        self.closed = False
        self._close_pending = False
        self._validate_id: str | None = None
        self._build_id: str | None = None
        self.problems: list[str] = []
        self._builders: dict = {}
        self._built: set[str] = set()
        self.form = Form(Preset(), self._field_changed, self.dialogs.browse)
        self._saved = preset_to_dict(self.form.preset)
        self.runner = Runner(self, session_factory or default_session_factory)

        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        self._build_top_bar()
        self.tabview = Tabview(self, command=self._tab_selected)
        self.tabview.grid(row=1, column=0, sticky="nsew", padx=8, pady=(0, 4))
        self.tabs = {cls.title: cls(self, self.tabview.add(cls.title)) for cls in TAB_CLASSES}
        self.run_tab: RunTab = self.tabs["run"]
        self.bottom = BottomBar(self, self.start_stop, self.runner.command)
        self.bottom.grid(row=2, column=0, sticky="ew")

        if preset is not None:
            self.set_preset(preset, None)
        else:
            path = Path(preset_path) if preset_path else DEFAULT_PRESET
            if not self.load_file(path) and preset_path is None:
                self.bottom.show_message(f"No built-in demo preset ({path}): starting from the defaults.", "warning")
        self._builders = {title: tab.steps() for title, tab in self.tabs.items()}
        self._build_tab(self.tabview.get())
        if lazy:
            self._build_id = self.after(30, self._build_slice)
        else:
            self.finish_building()
        self.protocol("WM_DELETE_WINDOW", self.on_close)
        self._tick_id = self.after(Runner.DRAIN_MS, self._tick)
        self.schedule_validation()

    # ---- layout -------------------------------------------------------------------------------------

    def _build_top_bar(self) -> None:
        bar = ctk.CTkFrame(self, fg_color="transparent")
        bar.grid(row=0, column=0, sticky="ew", padx=12, pady=(10, 4))
        ctk.CTkLabel(bar, text="SeaChange", font=ctk.CTkFont(size=18, weight="bold")).pack(side="left", padx=(0, 16))
        ctk.CTkLabel(bar, text="Preset", text_color=MUTED).pack(side="left", padx=(0, 6))
        self.preset_menu = ctk.CTkOptionMenu(bar, values=[""], width=300, dynamic_resizing=False,
                                             command=self._menu_chosen)
        self.preset_menu.pack(side="left")
        Tooltip(self.preset_menu, "Built-in presets first, then the preset files you used recently.")
        self.load_button = ctk.CTkButton(bar, text="Load…", width=80, command=self.load_dialog)
        self.save_button = ctk.CTkButton(bar, text="Save", width=70, command=self.save)
        self.save_as_button = ctk.CTkButton(bar, text="Save as…", width=90, command=self.save_as)
        for button in (self.load_button, self.save_button, self.save_as_button):
            button.pack(side="left", padx=(8, 0))
        self.dirty_label = ctk.CTkLabel(bar, text="", text_color=WARNING)
        self.dirty_label.pack(side="right")
        self.name_label = ctk.CTkLabel(bar, text="", font=ctk.CTkFont(size=14))
        self.name_label.pack(side="right", padx=(0, 8))
        Tooltip(self.name_label, lambda: str(self.preset_path or "not saved to a file yet"))
        self._menu_items: dict[str, Path] = {}

    def _refresh_menu(self) -> None:
        items = {f"{name}  (built-in)": path for name, path in builtin_presets(self.presets_dir).items()}
        home = str(Path.home())
        for p in self.recent.existing():
            if not is_builtin(p, self.presets_dir):
                items[p.replace(home, "~", 1) if p.startswith(home) else p] = Path(p)
        self._menu_items = items
        self.preset_menu.configure(values=list(items) or ["(no presets found)"])
        current = next((label for label, p in items.items() if self.preset_path and p.resolve() ==
                        self.preset_path.resolve()), None)
        self.preset_menu.set(current or ("unsaved preset" if self.preset_path is None else self.preset_path.name))

    # ---- building the tabs in slices ----------------------------------------------------------------

    def _build_tab(self, title: str) -> None:
        builder = self._builders.pop(title, None)
        if builder is not None:
            for _ in builder:
                pass
            self._built.add(title)
            self.schedule_validation()

    def _build_slice(self) -> None:
        self._build_id = None
        if self.closed or not self._builders:
            return
        title, builder = next(iter(self._builders.items()))
        try:
            next(builder)
        except StopIteration:
            del self._builders[title]
            self._built.add(title)
        self.schedule_validation()
        if self._builders:
            self._build_id = self.after(1, self._build_slice)

    def finish_building(self) -> None:
        """Build whatever the lazy builder has not reached yet (tests and Start call this)."""
        for title in list(self._builders):
            self._build_tab(title)

    def _tab_selected(self) -> None:
        self._build_tab(self.tabview.get())

    # ---- the preset ---------------------------------------------------------------------------------

    @property
    def preset(self) -> Preset:
        return self.form.preset

    @property
    def dirty(self) -> bool:
        return bool(self.form.parse_errors) or preset_to_dict(self.form.preset) != self._saved

    def set_preset(self, preset: Preset, path: Path | None) -> None:
        """Show `preset` in every widget; `path` is the file it came from (None: not saved yet)."""
        self.form.load(preset)
        for title in self._built:
            self.tabs[title].reload()
        self._saved = preset_to_dict(preset)
        self.preset_path = Path(path) if path else None
        self._refresh_menu()
        self.schedule_validation()

    def load_file(self, path: str | Path) -> bool:
        """Load a preset file into the window; a bad file leaves the window as it was and says why."""
        path = Path(path).expanduser()
        try:
            preset = load_preset(path)
        except ConfigError as e:
            self.bottom.show_message(f"Could not load {path}: {e}", "error")
            self._refresh_menu()
            return False
        self.set_preset(preset, path)
        if not is_builtin(path, self.presets_dir):
            self.recent.add(path)
            self._refresh_menu()
        self.bottom.show_message(f"Loaded {path}.", "info")
        return True

    def _menu_chosen(self, label: str) -> None:
        path = self._menu_items.get(label)
        if path is None:
            return self._refresh_menu()
        if self.dirty and not self.dialogs.confirm("Unsaved changes", "Discard the changes to this preset and "
                                                   f"load {path.name}?"):
            return self._refresh_menu()
        self.load_file(path)

    def load_dialog(self) -> None:
        if self.dirty and not self.dialogs.confirm("Unsaved changes", "Discard the changes to this preset?"):
            return
        path = self.dialogs.ask_open_preset()
        if path:
            self.load_file(path)

    def save(self) -> bool:
        """Save over the current file; a built-in or never-saved preset asks for a new file instead."""
        if self.preset_path is None or is_builtin(self.preset_path, self.presets_dir):
            return self.save_as()
        return self.save_to(self.preset_path)

    def save_as(self) -> bool:
        path = self.dialogs.ask_save_preset()
        return self.save_to(path) if path else False

    def save_to(self, path: str | Path) -> bool:
        """Write exactly the preset the widgets show; refuses while a value is invalid (it would not load)."""
        problems = self.form.problems(check_paths=False)
        if problems:
            self.bottom.show_message(f"Not saved: {describe_problem(problems[0], self.preset)}", "error")
            return False
        path = Path(path).expanduser()
        try:
            save_preset(self.form.preset, path)
        except OSError as e:
            self.bottom.show_message(f"Could not save {path}: {e.strerror or e}", "error")
            return False
        self._saved = preset_to_dict(self.form.preset)
        self.preset_path = path
        if not is_builtin(path, self.presets_dir):
            self.recent.add(path)
        self._refresh_menu()
        self.bottom.show_message(f"Saved {path}.", "success")
        self.schedule_validation()
        return True

    # ---- validation -----------------------------------------------------------------------------------

    def _field_changed(self, path: str) -> None:
        for tab in self.tabs.values():
            tab.field_changed(path)
        self.schedule_validation()

    def schedule_validation(self) -> None:
        if self._validate_id is None and not self.closed:
            self._validate_id = self.after_idle(self.validate_now)

    def validate_now(self) -> list[str]:
        """Mark every problem on its widget, enable or disable Start with the reason, show the unsaved mark."""
        if self._validate_id is not None:
            self.after_cancel(self._validate_id)
            self._validate_id = None
        self.problems = self.form.problems(check_paths=True)
        self.form.mark(self.problems)
        self.tabs["concepts"].mark(self.problems)
        self.bottom.set_problems([describe_problem(p, self.preset) for p in self.problems])
        name = ("unsaved preset" if self.preset_path is None else
                self.preset_path.stem + ("  (built-in)" if is_builtin(self.preset_path, self.presets_dir) else ""))
        dirty = self.dirty
        self.name_label.configure(text=name)
        self.dirty_label.configure(text="● unsaved changes" if dirty else "")
        self.title(f"SeaChange — {name}{' *' if dirty else ''}")
        return self.problems

    # ---- running -----------------------------------------------------------------------------------

    def start_stop(self) -> None:
        if self.runner.running:
            self.stop()
        else:
            self.start()

    def start(self) -> bool:
        """Start training a copy of the preset as shown; False (with the reason shown) when it cannot."""
        self.finish_building()
        if self.runner.running or self.validate_now():
            return False
        self.run_tab.clear()
        self.bottom.reset_progress()
        self.bottom.show_message("", "info")
        try:
            self.runner.start(self.form.preset)
        except Exception as e:  # noqa: BLE001 - a session that cannot even start is shown, not raised
            self.runner.session = None
            self.bottom.show_message(f"Could not start: {e}", "error")
            return False
        self.bottom.set_running(True)
        self.bottom.show_status("Starting…")
        self.tabview.set("run")
        return True

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.bottom.set_running(True, stopping=True)
            self.bottom.show_status("Stopping at the next step…")

    def run_finished(self, event) -> None:
        self.schedule_validation()
        if self._close_pending:
            self.after(0, self.close_now)

    def _tick(self) -> None:
        if self.closed:
            return
        more = self.runner.drain()
        if not self.closed:
            self._tick_id = self.after(5 if more else Runner.DRAIN_MS, self._tick)

    # ---- closing ------------------------------------------------------------------------------------

    def on_close(self) -> None:
        """The window's close button: during a run ask, stop cleanly, then close; else ask about unsaved work."""
        if self.runner.running:
            if self._close_pending:  # closed again while stopping: stop waiting
                return self.close_now()
            unsaved = " Unsaved changes to the preset will be lost." if self.dirty else ""
            if not self.dialogs.confirm("Stop training?", "A training is running. Stop it and close SeaChange?"
                                        + unsaved):
                return
            self._close_pending = True
            self.stop()
            self.bottom.show_status("Stopping, then closing…")
            return
        if self.dirty and not self.dialogs.confirm("Unsaved changes", "The preset has unsaved changes. Close "
                                                   "SeaChange anyway?"):
            return
        self.close_now()

    def close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        for after_id in (self._tick_id, self._build_id, self._validate_id):
            if after_id is not None:
                try:
                    self.after_cancel(after_id)
                except tk.TclError:
                    pass
        self.destroy()
