"""The SeaChange window: top bar (presets, load, save), the tabs, the bottom bar; runs trainings via Runner."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path
from typing import Callable

import customtkinter as ctk

from app.bottom_bar import BottomBar
from app.dialogs import Dialogs
from app.form import Form, describe_problem
from app.recent import DEFAULT_PRESET, PRESETS_DIR, RecentFiles, builtin_presets, is_builtin
from app.run_questions import answer_refusal, ask_about_earlier_run
from app.runner import Runner
from app.tabs.backup import BackupTab
from app.tabs.concepts import ConceptsTab
from app.tabs.general import GeneralTab
from app.tabs.model import ModelTab
from app.tabs.queue import QueueTab
from app.tabs.results import ResultsTab
from app.tabs.run import RunTab
from app.tabs.sampling import SamplingTab
from app.tabs.tools import ToolsTab
from app.tabs.training import TrainingTab
from app.tool_runner import ToolRunner
from app.widgets import MUTED, WARNING, Tabview, Tooltip, bind_edit_keys
from trainer import events as ev
from trainer.config import Preset, load_preset, preset_to_dict, save_preset
from trainer.fields import ConfigError

TAB_CLASSES = (GeneralTab, ModelTab, ConceptsTab, TrainingTab, SamplingTab, BackupTab, RunTab, QueueTab, ToolsTab,
               ResultsTab)


def default_session_factory(preset, resume: str | None = None, fresh: bool = False,
                            allow_changed_data: bool = False):
    """A training session in a child process; the options as trainer.session.TrainingSession has them."""
    from trainer.session import TrainingSession  # cheap: the engine loads in the session's child process
    return TrainingSession(preset, resume=resume, process=True, fresh=fresh,  # torch never holds this process
                           allow_changed_data=allow_changed_data)


class Window(ctk.CTk):
    """The main window. `session_factory(preset, resume=, fresh=, allow_changed_data=)` makes the session (tests
    pass a fake); `dialogs` asks the user (tests pass a stub); `lazy` builds the tabs after the first paint, a
    slice per Tk tick."""

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
        self.runner = Runner(session_factory or default_session_factory, self.run_finished)
        self.tool_runners: list[ToolRunner] = []  # the tool tabs register theirs

        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        self._build_top_bar()
        self.tabview = Tabview(self, command=self._tab_selected)
        self.tabview.grid(row=1, column=0, sticky="nsew", padx=8, pady=(0, 4))
        self.tabs = {cls.title: cls(self, self.tabview.add(cls.title)) for cls in TAB_CLASSES}
        self.run_tab: RunTab = self.tabs["run"]
        self.bottom = BottomBar(self, self.start_stop, self.command)
        self.bottom.grid(row=2, column=0, sticky="ew")
        self.runner.subscribe(self.bottom.handle, self.bottom.drained)  # the run tab subscribes its widgets

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
        self.bind("<FocusIn>", lambda _e: self.schedule_validation(), add="+")  # back from making a folder
        bind_edit_keys(self)  # Ctrl+A selects all; below, Ctrl+S saves, Ctrl+Shift+S saves as, Ctrl+O loads
        for key, action in (("<Control-s>", self.save), ("<Control-Shift-S>", self.save_as),
                            ("<Control-o>", self.load_dialog)):
            self.bind(key, lambda _e, act=action: act())
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
            self.bottom.show_message(f"Could not load the preset: {e}", "error")  # the message names the file
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
            self.bottom.show_message(f"Not saved: {describe_problem(problems[0], self.preset)}", "error",
                                     about=problems[0])
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
        self.bottom.message_line.edited()  # what the last run, load or save said is past
        self.schedule_validation()

    def schedule_validation(self) -> None:
        if self._validate_id is None and not self.closed:
            self._validate_id = self.after_idle(self.validate_now)

    def validate_now(self) -> list[str]:
        """Mark every problem on its widget, enable or disable Start with the reason (a training that runs is no
        reason: its button is Stop), show the unsaved mark; a "Not saved" message goes once its problem is fixed."""
        if self._validate_id is not None:
            self.after_cancel(self._validate_id)
            self._validate_id = None
        self.problems = self.form.problems(check_paths=True)
        self.form.mark(self.problems)
        self.tabs["concepts"].mark(self.problems)
        busy = None if self.runner.running else self.device_busy()
        self.bottom.set_problems([f"{busy}; wait for it or stop it"] * bool(busy)
                                 + [describe_problem(p, self.preset) for p in self.problems])
        if self.bottom.message_line.field:  # a "Not saved": it goes with its problem
            self.bottom.message_line.problems_now(self.form.problems(check_paths=False))
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

    def start(self, resume: str | None = None, fresh: bool = False, allow_changed_data: bool = False) -> bool:
        """Start training a copy of the preset as shown; False (with the reason shown) when it cannot or the user
        cancelled. Where an earlier run left backups, samples or a model, first ask: continue it, start over
        (its files are moved aside, never overwritten) or cancel; unless `resume` or `fresh` already says."""
        self.finish_building()
        if self.runner.running or self.validate_now() or self.device_busy():
            return False
        options = {"resume": resume, "fresh": fresh, "allow_changed_data": allow_changed_data}
        if resume is None and not fresh:
            chosen = ask_about_earlier_run(self.dialogs, self.form.preset)
            if chosen is None:
                self.bottom.show_message("Not started: the earlier run in the workspace is left as it is.", "info")
                return False
            options.update(chosen)
        self.run_tab.log.clear()  # the chart and samples stay until the new run draws (see LossChart.handle)
        if options["resume"]:
            self.run_tab.continue_record()  # a resumed run goes on drawing the run it continues
        self.bottom.reset_progress()
        self.bottom.show_message("", "info")
        if not self.runner.started(self.form.preset, self.bottom.show_message, **options):
            return False
        self.bottom.set_running(True)
        self.bottom.show_status("Starting…")
        self.tabview.set("run")
        self.jobs_changed()
        return True

    def command(self, name: str) -> None:
        """Sample now, Backup now or Save now (events.SAMPLE_NOW...): the running training takes it at its next
        step (one still loading or caching, at its first), which the message line says."""
        if self.runner.running and not self.runner.stopping:
            self.runner.command(name)
            what = {ev.SAMPLE_NOW: "Samples", ev.BACKUP_NOW: "A backup", ev.SAVE_NOW: "A save"}.get(name, name)
            self.bottom.show_message(f"{what} asked for: taken after the next training step.", "info")

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.bottom.set_running(True, stopping=True)
            self.bottom.show_status("Stopping at the next step…")

    def run_finished(self, event) -> None:
        """A training or a tool ended (its views showed how): Start buttons re-check, a pending close goes ahead,
        a refusal the user can resolve asks."""
        self.jobs_changed()
        if self._close_pending and not self.any_running():
            self.after(0, self.close_now)
        elif event.refusal in ("earlier_run", "data_changed"):
            self.after(0, self.resolve_refusal, event, dict(self.runner.options))

    def resolve_refusal(self, event, options: dict) -> bool:
        """A run refused to start until the user chooses (see run_questions.answer_refusal): ask, then start
        again as chosen; True when it did."""
        if self.closed or self._close_pending or self.runner.running:
            return False
        chosen = answer_refusal(self.dialogs, self.form.preset, event, options)
        return bool(chosen) and self.start(**chosen)

    def device_busy(self, asking: ToolRunner | None = None) -> str | None:
        """What holds the device (a training, or a tool that loads a model), in words; None when it is free.
        One such job at a time: two would compete for the GPU's memory. `asking` is left out of the check."""
        if self.runner.running:
            return "A training is running"
        for tool in self.tool_runners:
            if tool is not asking and tool.using_device:
                return f"{tool.name} is running"
        return None

    def any_running(self) -> bool:
        return self.runner.running or any(tool.running for tool in self.tool_runners)

    def jobs_changed(self) -> None:
        """A training or a tool started or finished: every Start button re-checks whether it may run. The window
        checks first, then the tabs one at a time, each in a Tk tick of its own: a check may redraw buttons and
        fields (tens of ms on a slow machine), and all of them in one tick would hold up the window."""
        self.schedule_validation()
        self._tell_tabs(list(self.tabs.values()), now=False)

    def _tell_tabs(self, tabs: list, now: bool = True) -> None:
        """Tell `tabs[0]` that the jobs changed (`now`); the next tab hears it in the tick after the checks that
        wait for an idle moment (this tab's, the window's) have run. A timer, not an idle callback: CTk runs
        the idle callbacks there are whenever it redraws a scrollbar, and the checks would pile up there."""
        if self.closed or not tabs:
            return
        if now:
            tabs[0].jobs_changed()
            tabs = tabs[1:]
        if tabs:
            self.after_idle(lambda: None if self.closed else self.after(0, self._tell_tabs, tabs))

    def sessions(self) -> list:
        """The live sessions (training and tools), for a clean shutdown after the window closed."""
        return [s for s in [self.runner.session] + [t.session for t in self.tool_runners] if s is not None]

    def _tick(self) -> None:
        if self.closed:
            return
        more = self.runner.drain()
        for tool in self.tool_runners:
            more = tool.drain() or more
        if not self.closed:
            self._tick_id = self.after(5 if more else Runner.DRAIN_MS, self._tick)

    # ---- closing ------------------------------------------------------------------------------------

    def on_close(self) -> None:
        """The window's close button: during a run ask, stop cleanly, then close; else ask about unsaved work."""
        if self.any_running():
            if self._close_pending:  # closed again while stopping: stop waiting
                return self.close_now()
            what = ["a training"] * self.runner.running + [t.name.lower() for t in self.tool_runners if t.running]
            unsaved = " Unsaved changes to the preset will be lost." if self.dirty else ""
            title = "Stop training?" if what == ["a training"] else "Stop and close?"
            if not self.dialogs.confirm(title, f"{' and '.join(what).capitalize()} "
                                        f"{'are' if len(what) > 1 else 'is'} running. Stop and close SeaChange?"
                                        + unsaved):
                return
            self._close_pending = True
            self.stop()
            for tool in self.tool_runners:
                tool.stop()
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
        for tab in self.tabs.values():
            tab.closing()
        for after_id in (self._tick_id, self._build_id, self._validate_id):
            if after_id is not None:
                try:
                    self.after_cancel(after_id)
                except tk.TclError:
                    pass
        self.destroy()
