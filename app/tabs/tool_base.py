"""What the tool tabs share: a spec form (kept for the next session), Load/Save spec, Start/Stop with the reason it
cannot start, progress and the run's outcome."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path
from typing import Any, Callable, Iterator

import customtkinter as ctk

from app.bottom_bar import (DISABLED, START_COLOUR, STOP_COLOUR, UNCUT, Line, MessageLine, problem_text,
                            set_enabled)
from app.form import Form, describe_problem
from app.recent import LastSpec
from app.tabs.common import ListEditor, Tab
from app.tool_runner import ToolRunner
from app.widgets import MUTED, WARNING, Tooltip, reconfigure
from trainer import events as ev
from trainer.fields import ConfigError, default_of
from trainer.specs import load_spec, save_spec, validate_spec

PANE_BG = "#2b2b2b"  # the tab's background in dark mode (gray17): the bar between the form and what it made


class ToolTab(Tab):
    """A tab that edits a tool spec (its own Form, not the preset's) and runs the tool in a session.

    Subclasses set the class attributes, build their body in `steps()` after `build_toolbar()`, and handle the
    tool's own events in `on_event()`. The spec as last edited (when valid) is kept beside the window's
    recent-presets file and shown again when the window opens.
    """

    spec_cls: type = object
    prefills: dict[str, Callable[[Any], str]] = {}  # spec field -> its value from the window's preset
    what = ""            # the tool in file dialogs and the CLI: "generate-data", "compare"
    tool_name = ""       # in "… is running": "Data generation", "A comparison"
    start_text = "Start"
    start_tip = ""

    def __init__(self, window, frame):
        super().__init__(window, frame)
        self.last_spec = LastSpec(window.recent.path.with_name(f"last-{self.what}.json"))
        spec, prefilled = self.last_spec.read(self.spec_cls) or (self.spec_cls(), {})
        self.spec_form = Form(spec, self._spec_changed, window.dialogs.browse, validator=self.spec_problems)
        self.spec_editors: list[ListEditor] = []
        self.runner = ToolRunner(self.tool_name, self.make_session, window.run_finished, self.uses_device)
        self.runner.subscribe(self._handle)
        window.tool_runners.append(self.runner)
        self.problems: list[str] = []
        self.reasons: list[str] = []
        self.last_finished: ev.RunFinished | None = None
        self._validate_id: str | None = None
        self._prefilled: dict[str, str] = prefilled  # spec field -> the preset's value this tab filled in

    @property
    def spec(self) -> Any:
        return self.spec_form.preset

    # ---- for subclasses -------------------------------------------------------------------------------

    def make_session(self, spec):
        raise NotImplementedError

    def uses_device(self, spec) -> bool:
        return True

    def path_problems(self, spec) -> list[str]:
        """Inputs that do not exist, as 'path: reason' (the engine checks again when it runs)."""
        return []

    def on_event(self, event) -> None:
        """A tool event (not Status, Log or RunFinished)."""

    def on_start(self) -> None:
        """Clear what the last run showed."""

    def on_finish(self, event: ev.RunFinished) -> None:
        """After the outcome is shown."""

    def spec_loaded(self) -> None:
        """After a spec was loaded into the form."""

    # ---- defaults from the preset ---------------------------------------------------------------------

    def prefill(self) -> None:
        """Spec fields that are empty, at their default, or filled in by this tab follow the preset (the model
        it trains, its workspace); a value the user typed or loaded stays."""
        for name, from_preset in self.prefills.items():
            wanted, current = from_preset(self.window.preset), getattr(self.spec, name)
            if current != wanted and current in ("", default_of(self.spec_cls, name), self._prefilled.get(name)):
                setattr(self.spec, name, wanted)
                self.spec_form.refresh(name)
                self.schedule_validation()
            self._prefilled[name] = wanted

    def reload(self) -> None:
        self.prefill()

    def field_changed(self, path: str) -> None:
        self.prefill()

    # ---- layout -----------------------------------------------------------------------------------------

    def build_toolbar(self) -> ctk.CTkFrame:
        """Load spec…, Save spec…, progress, count and Start/Stop in one row; the reason Start is disabled and
        the last run's outcome below it, a line each, always there (empty when there is nothing to say), so that
        the form below never moves."""
        bar = ctk.CTkFrame(self.frame, fg_color="transparent")
        bar.grid(row=0, column=0, sticky="ew", padx=10, pady=(8, 2))
        bar.grid_columnconfigure(3, weight=1)
        self.load_button = ctk.CTkButton(bar, text="Load spec…", width=100, command=self.load_dialog)
        self.save_button = ctk.CTkButton(bar, text="Save spec…", width=100, command=self.save_dialog)
        self.load_colour = self.load_button.cget("fg_color")
        self.load_button.grid(row=0, column=0, padx=(0, 6))
        self.save_button.grid(row=0, column=1, padx=(0, 16))
        Tooltip(self.load_button, f"Load a {self.what} spec file (the CLI runs the same file: "
                                  f"python -m trainer {self.what} SPEC.json).")
        Tooltip(self.save_button, f"Save these settings as a spec file for later, or for python -m trainer "
                                  f"{self.what} SPEC.json.")
        self.status_label = ctk.CTkLabel(bar, text="", text_color=MUTED, anchor="w")
        self.status_label.grid(row=0, column=2, sticky="w", padx=(0, 10))
        self.progress = ctk.CTkProgressBar(bar, height=10)
        self.progress.grid(row=0, column=3, sticky="ew")
        self.progress.set(0)
        self.count_label = ctk.CTkLabel(bar, text="", width=90)
        self.count_label.grid(row=0, column=4, padx=8)
        self.start_button = ctk.CTkButton(bar, text=self.start_text, width=110, height=34,
                                          font=ctk.CTkFont(size=14, weight="bold"), command=self.start_stop)
        self.start_button.grid(row=0, column=5)
        Tooltip(self.start_button, self._start_tooltip)
        self.problem_line, self.message_line = Line(bar, tip=False, text_color=WARNING), MessageLine(bar)
        self.problem_label, self.message_label = self.problem_line.label, self.message_line.label
        for row, label in ((1, self.problem_label), (2, self.message_label)):
            label.grid(row=row, column=0, columnspan=6, sticky="ew", pady=(2, 0))
        bar.bind("<Configure>", lambda _e: self._fit_lines(), add="+")
        self.show_running()
        return bar

    def build_split(self, form_height: int) -> ctk.CTkScrollableFrame:
        """Below the toolbar: the form (it scrolls) over what the tool makes (add it with `add_lower()`), with a
        bar between them to drag. Returns the form's area."""
        paned = tk.PanedWindow(self.frame, orient="vertical", bg=PANE_BG, sashwidth=8, borderwidth=0,
                               sashrelief="flat")
        paned.grid(row=1, column=0, sticky="nsew", padx=4, pady=(2, 6))
        top = ctk.CTkFrame(paned, fg_color="transparent")
        area = ctk.CTkScrollableFrame(top, fg_color="transparent")
        area.pack(fill="both", expand=True)
        paned.add(top, minsize=100, height=form_height, stretch="always")
        self.paned, self.top_pane = paned, top
        return area

    def add_lower(self, widget, minsize: int, stretch: str = "always", height: int | None = None) -> None:
        self.paned.add(widget, minsize=minsize, stretch=stretch, **({"height": height} if height else {}))

    def fit_panes(self, form: int | None = None, lower: int | None = None) -> None:
        """Move the bar so the form gets `form` px, or the lower pane `lower` px (the form keeps at least 100,
        the lower pane 60); the user may drag it again."""
        total = self.paned.winfo_height()
        if total <= 1:  # not laid out yet: only the form's wish can be given
            if form is not None:
                self.paned.paneconfigure(self.top_pane, height=form)
            return
        y = form if form is not None else total - (lower or 0)
        self.paned.sash_place(0, 0, max(100, min(y, total - 60)))

    def _start_tooltip(self) -> str:
        if self.runner.running:
            return "Stop cleanly after the current image; what is done so far is kept."
        if self.reasons:
            return "Fix these first:\n" + "\n".join(f"• {r}" for r in self.reasons)
        return self.start_tip

    def show_running(self) -> None:
        """Start/Stop's text, colour and state."""
        if not hasattr(self, "start_button"):
            return
        running = self.runner.running
        if running:
            reconfigure(self.start_button, text="Stopping…" if self.runner.stopping else "Stop",
                                        state="disabled" if self.runner.stopping else "normal",
                                        fg_color=STOP_COLOUR[0], hover_color=STOP_COLOUR[1])
        else:
            ok = not self.reasons
            reconfigure(self.start_button, text=self.start_text, state="normal" if ok else "disabled",
                                        fg_color=START_COLOUR[0] if ok else DISABLED, hover_color=START_COLOUR[1])
        set_enabled(self.load_button, not running, self.load_colour)
        self._fit_lines()

    def show_message(self, text: str, level: str = "info", about: str = "") -> None:
        """The outcome of a run or of a spec load/save; empty text clears it. It goes at the next edit of the
        spec or Start; one `about` a problem (a "Not saved") once that problem's field has none."""
        self.message_line.show(text, level, about)

    def _fit_lines(self) -> None:
        """Fill the problem and message lines, each cut to one line of the tab's width."""
        if not hasattr(self, "problem_label"):
            return
        width = self.frame.winfo_width() - 40 if self.frame.winfo_width() > 1 else UNCUT  # not laid out yet
        reasons = [] if self.runner.running else self.reasons
        self.problem_line.text, self.problem_line.tail = problem_text(reasons, "Can't start", self.start_text)
        self.problem_line.fit(width)
        self.message_line.fit(width)

    def show_count(self, done: int, total: int) -> None:
        self.progress.set(done / total if total else 0)
        self.count_label.configure(text=f"{done} / {total}")

    def add_editor(self, parent, list_path: str, add_text: str) -> ListEditor:
        editor = ListEditor(parent, self.spec_form, list_path, add_text=add_text)
        self.spec_editors.append(editor)
        return editor

    # ---- validation -----------------------------------------------------------------------------------

    def spec_problems(self, spec, check_paths: bool = True) -> list[str]:
        return validate_spec(spec) + (self.path_problems(spec) if check_paths else [])

    def _spec_changed(self, path: str) -> None:
        self.message_line.edited()  # what the last run, load or save said is past
        self.schedule_validation()

    def jobs_changed(self) -> None:
        self.schedule_validation()

    def schedule_validation(self) -> None:
        if self._validate_id is None and not self.window.closed:
            self._validate_id = self.window.after_idle(self.validate_now)

    def validate_now(self) -> list[str]:
        """Mark the spec's problems on their widgets; Start is disabled with the reasons (a bad value, or the
        device held by a training or another tool). A spec that would save is kept for the next session."""
        if self._validate_id is not None:
            self.window.after_cancel(self._validate_id)
            self._validate_id = None
        save_problems = self.spec_form.problems(check_paths=False)
        self.problems = save_problems + self.path_problems(self.spec)
        self.spec_form.mark(self.problems)
        if not save_problems:
            self.last_spec.write(self.spec, self._prefilled)
        if hasattr(self, "message_line"):
            self.message_line.problems_now(save_problems)  # a "Not saved" goes with its problem
        busy = self.window.device_busy(asking=self.runner) if self.uses_device(self.spec) else None
        self.reasons = [f"{busy}; wait for it or stop it"] * bool(busy) + \
            [describe_problem(p, self.spec) for p in self.problems]
        self.show_running()
        return self.reasons

    def closing(self) -> None:
        if self._validate_id is not None:  # an edit not validated yet: keep it too
            self.validate_now()

    # ---- running --------------------------------------------------------------------------------------

    def start_stop(self) -> None:
        self.stop() if self.runner.running else self.start()

    def clear(self) -> None:
        """Forget what the last run showed."""
        self.show_message("")
        self.progress.set(0)
        self.count_label.configure(text="")
        self.last_finished = None
        self.on_start()

    def start(self) -> bool:
        """Run the tool on the spec as shown; False (with the reason shown) when it cannot."""
        if self.runner.running or self.validate_now():
            return False
        self.clear()
        if not self.runner.started(self.spec, self.show_message):
            return False
        self.status_label.configure(text="Starting…")
        self.show_running()
        self.window.jobs_changed()
        return True

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.status_label.configure(text="Stopping after the current image…")
            self.show_running()

    def _handle(self, event) -> None:
        if isinstance(event, ev.Status):
            self.status_label.configure(text=event.text if len(event.text) <= 90 else event.text[:89] + "…")
        elif isinstance(event, ev.Log):
            if event.level != "error":  # a failure's traceback: its message comes with the RunFinished
                self.status_label.configure(text=event.text.splitlines()[0] if event.text else "")
        elif isinstance(event, ev.RunFinished):
            self._finish(event)
        else:
            self.on_event(event)

    def _finish(self, event: ev.RunFinished) -> None:
        self.last_finished = event
        level = {"completed": "success", "stopped": "info"}.get(event.outcome, "error")
        head = {"completed": "Done", "stopped": "Stopped"}.get(event.outcome, "Failed")
        self.show_message(f"{head}: {event.message or 'no reason given'}", level)
        self.status_label.configure(text="")
        self.on_finish(event)

    # ---- spec files -----------------------------------------------------------------------------------

    def load_dialog(self) -> None:
        path = self.window.dialogs.ask_open_spec(self.what)
        if path:
            self.load_spec(path)

    def save_dialog(self) -> None:
        path = self.window.dialogs.ask_save_spec(self.what)
        if path:
            self.save_spec(path)

    def load_spec(self, path: str | Path) -> bool:
        """Show the spec in a file; a bad file leaves the form as it was and says why."""
        try:
            spec = load_spec(Path(path).expanduser(), self.spec_cls)
        except ConfigError as e:
            # the message names the file
            self.show_message(f"Could not load the spec: {describe_problem(str(e), self.spec)}", "error")
            return False
        self.set_spec(spec)
        self.show_message(f"Loaded {path}.", "info")
        return True

    def set_spec(self, spec) -> None:
        self._prefilled.clear()  # a loaded spec's values are the user's
        self.spec_form.load(spec)
        for editor in self.spec_editors:
            editor.sync()
        self.spec_loaded()
        self.schedule_validation()

    def save_spec(self, path: str | Path) -> bool:
        """Write the spec as shown; refuses while a value is invalid (the file would not load)."""
        problems = self.spec_form.problems(check_paths=False)
        if problems:
            self.show_message(f"Not saved: {describe_problem(problems[0], self.spec)}", "error", about=problems[0])
            return False
        try:
            save_spec(self.spec, Path(path).expanduser())
        except OSError as e:
            self.show_message(f"Could not save {path}: {e.strerror or e}", "error")
            return False
        self.show_message(f"Saved {path}.", "success")
        return True

    def steps(self) -> Iterator[None]:
        yield
