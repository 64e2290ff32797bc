"""The queue tab: a queue of runs and sweeps (trainer/tools/run_queue.py) edited and run from the window. Its entries
and
their runs, each with its state (QUEUE.state.json, then live from events.QueueRunState); add the window's settings
or a preset file, sweep an entry, reorder, remove; start, pause after the current run, stop."""
from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path

import customtkinter as ctk

from app.bottom_bar import START_COLOUR, STOP_COLOUR, Line, MessageLine, problem_text, set_enabled
from app.form import describe_problem
from app.queue_dialogs import SweepDialog
from app.queue_list import QueueList, read_checked, sweep_runs
from app.tabs.common import Tab
from app.tool_runner import ToolRunner
from app.widgets import MUTED, WARNING, TextField, Tooltip, reconfigure
from trainer import events as ev
from trainer.config import Preset, load_preset, preset_from_dict, preset_to_dict
from trainer.errors import InputError
from trainer.fields import ConfigError, atomic_write_text
from trainer.tools.run_queue import (QueueEntry, QueueFile, RunState, expand_entry, read_state, safe_part, set_pause,
                                     write_queue)

DEFAULT_QUEUE = "workspace/queue.json"  # relative to the folder SeaChange runs in, as the presets' paths
LEVELS = {"completed": "success", "stopped": "info"}  # a queue's or run's outcome -> message level (else error)


class QueueTab(Tab):
    title = "queue"

    def __init__(self, window, frame):
        super().__init__(window, frame)
        self.remembered = window.recent.path.with_name("last-queue.json")
        self.path = Path(self._remembered_path() or DEFAULT_QUEUE)
        self.queue_file = QueueFile()
        self.records: dict[str, RunState] = {}
        self.problem = ""  # why the queue as on disk cannot run (read_queue, read_state or check_queue said)
        self.unreadable = False  # the file is there but does not read: edits would lose it
        self.reasons: list[str] = []
        self.current = ""  # the run running now
        self.last_finished: ev.RunFinished | None = None
        self.runner = ToolRunner("The queue", self.make_session, window.run_finished, lambda _path: True)
        self.runner.subscribe(self._handle)
        self.runner.subscribe(self._to_run_tab)
        self.runner.subscribe(self._to_bottom_bar, lambda: self.window.bottom.drained())  # made after the tabs
        window.tool_runners.append(self.runner)

    # ---- building ---------------------------------------------------------------------------------------

    def steps(self):
        f = self.frame
        f.grid_columnconfigure(0, weight=1)
        f.grid_rowconfigure(2, weight=1)
        self._build_file_bar()
        self._build_buttons()
        yield
        self._build_tree()
        f.bind("<Map>", lambda _e: None if self.runner.running else self.refresh(), add="+")  # edited elsewhere?
        self.refresh()
        yield

    def _build_file_bar(self) -> None:
        bar = ctk.CTkFrame(self.frame, fg_color="transparent")
        bar.grid(row=0, column=0, sticky="ew", padx=10, pady=(8, 2))
        bar.grid_columnconfigure(4, weight=1)
        ctk.CTkLabel(bar, text="Queue file").grid(row=0, column=0, padx=(0, 8))
        self.path_entry = TextField(bar, width=380)
        self.path_entry.show(str(self.path))
        self.path_entry.grid(row=0, column=1)
        for sequence in ("<Return>", "<FocusOut>"):
            self.path_entry.bind(sequence, lambda _e: self.set_path(self.path_entry.get_raw()), add="+")
        Tooltip(self.path_entry, "The queue's file (QUEUE.json; python -m trainer queue runs the same file). Its "
                                 "runs' states are kept beside it in QUEUE.state.json.")
        self.open_button = ctk.CTkButton(bar, text="Open…", width=70, command=self.open_dialog)
        self.new_button = ctk.CTkButton(bar, text="New…", width=70, command=self.new_dialog)
        self.open_button.grid(row=0, column=2, padx=(6, 0))
        self.new_button.grid(row=0, column=3, padx=(6, 12))
        self.file_colour = self.open_button.cget("fg_color")
        self.start_button = ctk.CTkButton(bar, text="Start queue", width=120, height=34, fg_color=START_COLOUR[0],
                                          hover_color=START_COLOUR[1], font=ctk.CTkFont(size=14, weight="bold"),
                                          command=self.start)
        self.pause_box = ctk.CTkCheckBox(bar, text="Pause after this run", command=self.pause_changed)
        self.stop_button = ctk.CTkButton(bar, text="Stop", width=80, height=34, fg_color=STOP_COLOUR[0],
                                         hover_color=STOP_COLOUR[1], command=self.stop)
        for column, widget in enumerate((self.start_button, self.pause_box, self.stop_button), 5):
            widget.grid(row=0, column=column, padx=(8, 0))
        Tooltip(self.start_button, lambda: "Fix these first:\n" + "\n".join(f"• {r}" for r in self.reasons)
                if self.reasons and not self.runner.running else "Train the runs that are not completed, in "
                "order; a stopped run continues from its last backup.")
        Tooltip(self.pause_box, "Stop the queue once the current run ends (the runs left wait for the next Start).")
        Tooltip(self.stop_button, "Stop the current run now (it writes its backup) and the queue; Start queue "
                                  "continues it.")
        self.problem_line, self.message_line = Line(bar, tip=False, text_color=WARNING), MessageLine(bar)
        for row, line in ((1, self.problem_line), (2, self.message_line)):
            line.label.grid(row=row, column=0, columnspan=8, sticky="ew", pady=(2, 0))

    def _build_buttons(self) -> None:
        row = ctk.CTkFrame(self.frame, fg_color="transparent")
        row.grid(row=1, column=0, sticky="ew", padx=10, pady=(2, 4))
        self.buttons = {}
        for text, command, tip in (
                ("Add current settings", self.add_current, "Add the preset as the window shows it now (a copy: "
                                                           "later edits do not change the entry)."),
                ("Add preset file…", self.add_preset_file, "Add a preset file (the queue reads it when it runs)."),
                ("Sweep…", self.sweep, "Try several values of settings in the selected entry: one run each."),
                ("Remove", self.remove, "Remove the selected entry (its runs' files stay)."),
                ("Up", lambda: self.move(-1), "Run the selected entry earlier."),
                ("Down", lambda: self.move(1), "Run the selected entry later."),
                ("Compare samples", self.compare, "Show the selected entry's runs side by side in the results tab: "
                                                  "their sample images, a column per run.")):
            button = ctk.CTkButton(row, text=text, width=60, command=command)
            button.pack(side="left", padx=(0, 6))
            Tooltip(button, tip)
            self.buttons[text] = button
        self.button_colour = self.buttons["Remove"].cget("fg_color")
        self.status_label = ctk.CTkLabel(row, text="", text_color=MUTED, anchor="w")
        self.status_label.pack(side="left", fill="x", expand=True, padx=(10, 0))

    def _build_tree(self) -> None:
        self.list = QueueList(self.frame, on_select=self.show_running)
        self.list.grid(row=2, column=0, sticky="nsew", padx=10, pady=(0, 10))

    # ---- the queue file -----------------------------------------------------------------------------------

    def _remembered_path(self) -> str:
        try:
            path = json.loads(self.remembered.read_text(encoding="utf-8")).get("path")
        except (OSError, ValueError, AttributeError):
            return ""
        return path if isinstance(path, str) else ""

    def set_path(self, path: str | Path) -> None:
        """Use the queue file at `path` (remembered for the next session) and show it; not while it runs."""
        text = str(path).strip()
        if self.runner.running or not text or Path(text) == self.path:
            self.path_entry.show(str(self.path))
            return
        self.path = Path(text)
        self.path_entry.show(text)
        try:
            atomic_write_text(self.remembered, json.dumps({"path": text}) + "\n")
        except OSError:
            pass  # a read-only home must not break the tab
        self.message_line.show("")
        self.refresh()

    def open_dialog(self) -> None:
        """Open… : choose an existing queue file."""
        path = self.window.dialogs.ask_open_spec("queue")
        if path:
            self.set_path(path)

    def new_dialog(self) -> None:
        """Choose a file for a new queue: it is written empty (an existing queue is opened, not replaced)."""
        path = self.window.dialogs.ask_save_spec("queue")
        if path and not Path(path).expanduser().exists() and self._write(QueueFile(), Path(path).expanduser()):
            self.message_line.show(f"New queue {path}: add entries to it.", "info")
        if path:
            self.set_path(path)

    def refresh(self) -> None:
        """Read the queue file and its state again, check every run as the runner will (check_queue), show them."""
        self.queue_file, self.records, self.problem, self.unreadable = read_checked(self.path.expanduser())
        if hasattr(self, "list"):
            self.list.fill(self.queue_file, self.records)
        self.validate_now()

    def _write(self, queue_file: QueueFile, path: Path | None = None) -> bool:
        """Write the queue (the runner reads it again between runs); False, said, when it cannot be written."""
        try:
            write_queue(queue_file, path or self.path.expanduser())
        except OSError as e:
            self.message_line.show(f"Could not write {path or self.path}: {e.strerror or e}", "error")
            return False
        return True

    def _edit(self, queue_file: QueueFile, message: str, select: int | None) -> bool:
        if not self._write(queue_file):
            return False
        self.refresh()
        if select is not None:
            self.list.select_entry(select)
        self.message_line.show(message, "info")
        return True

    def _editable(self) -> bool:
        if self.unreadable:
            self.message_line.show(f"Not changed: {self.problem}; repair the file, or open or make another",
                                   "error")
        return not self.unreadable

    def selected_entry(self) -> int | None:
        """The index of the entry selected (or of the selected run's entry); None when nothing is."""
        return self.list.selected_entry() if hasattr(self, "list") else None

    # ---- editing ------------------------------------------------------------------------------------------

    def _free_name(self, base: str) -> str:
        base = safe_part(base) or "entry"
        names = {entry.name for entry in self.queue_file.entries}
        return next(f"{base}-{n}" for n in itertools.count(1) if f"{base}-{n}" not in names)

    def add_current(self) -> bool:
        """Add the window's preset as it is now (a copy, as preset_data), named after it with a counter."""
        problems = self.window.form.problems(check_paths=False)
        if problems:
            self.message_line.show(f"Not added: {describe_problem(problems[0], self.window.preset)}", "error")
            return False
        if not self._editable():
            return False
        name = self._free_name(self.window.preset_path.stem if self.window.preset_path else "settings")
        entry = QueueEntry(name, preset_data=preset_to_dict(self.window.preset))
        changed = QueueFile(self.queue_file.entries + [entry])
        return self._edit(changed, f"Added {name}: the current settings.", len(changed.entries) - 1)

    def add_preset_file(self) -> bool:
        """Add a preset file (relative to the queue's folder when it lies below it)."""
        chosen = self.window.dialogs.ask_open_preset()
        if not chosen or not self._editable():
            return False
        path = Path(chosen).expanduser().absolute()
        try:
            load_preset(path)
        except ConfigError as e:
            self.message_line.show(f"Not added: {path} does not load: {e}", "error")
            return False
        folder = self.path.expanduser().absolute().parent
        shown = os.path.relpath(path, folder) if path.is_relative_to(folder) else str(path)
        changed = QueueFile(self.queue_file.entries + [QueueEntry(self._free_name(path.stem), preset=shown)])
        return self._edit(changed, f"Added {changed.entries[-1].name}: {shown}.", len(changed.entries) - 1)

    def _selected_or_say(self) -> int | None:
        index = self.selected_entry()
        if index is None:
            self.message_line.show("Select an entry in the list first.", "warning")
        return index if index is not None and self._editable() else None

    def entry_preset(self, index: int) -> Preset | None:
        """The entry's preset as loaded (its fixed overrides not applied); None when it does not load."""
        entry = self.queue_file.entries[index]
        try:
            if entry.preset_data is not None:
                return preset_from_dict(copy.deepcopy(entry.preset_data))
            path = Path(entry.preset).expanduser()
            return load_preset(path if path.is_absolute() else self.path.expanduser().absolute().parent / path)
        except ConfigError:
            return None

    def open_sweep_dialog(self, index: int) -> SweepDialog:
        """The sweep dialog of entry `index` (not yet waited for)."""
        entry = self.queue_file.entries[index]
        return SweepDialog(self.frame, entry.name, entry.sweep, self.entry_preset(index),
                           lambda sweep: self.set_sweep(index, sweep))

    def sweep(self) -> None:
        """Sweep… : edit the selected entry's sweep in a dialog (it waits for the answer)."""
        index = self._selected_or_say()
        if index is not None:
            self.open_sweep_dialog(index).wait()

    def set_sweep(self, index: int, sweep: dict[str, list]) -> str | None:
        """Give entry `index` this sweep when the engine's check of the entry takes it (trainer.tools.run_queue.
        expand_entry; input files are checked at Start): None, and the file is written; else its refusal."""
        changed = copy.deepcopy(self.queue_file)
        changed.entries[index].sweep = sweep
        try:
            runs = expand_entry(changed, index, self.path.expanduser().absolute().parent, check_paths=False)
        except InputError as e:
            return str(e)
        self._edit(changed, f"{changed.entries[index].name}: {len(runs)} run(s).", index)
        return None

    def remove(self) -> bool:
        """Remove the selected entry, once confirmed (the files its runs wrote stay)."""
        index = self._selected_or_say()
        if index is None:
            return False
        entry = self.queue_file.entries[index]
        if not self.window.dialogs.confirm("Remove entry", f"Remove {entry.name} ({len(sweep_runs(entry))} run(s)) "
                                           "from the queue? The files its runs wrote stay."):
            return False
        changed = QueueFile([e for i, e in enumerate(self.queue_file.entries) if i != index])
        return self._edit(changed, f"Removed {entry.name}.", min(index, len(changed.entries) - 1))

    def move(self, delta: int) -> bool:
        """Move the selected entry `delta` places (-1: up); the runner takes the new order after its run."""
        index = self._selected_or_say()
        if index is None or not 0 <= index + delta < len(self.queue_file.entries):
            return False
        entries = list(self.queue_file.entries)
        entries[index], entries[index + delta] = entries[index + delta], entries[index]
        return self._edit(QueueFile(entries), f"Moved {entries[index + delta].name} "
                                              f"{'up' if delta < 0 else 'down'}.", index + delta)

    def compare(self) -> None:
        """The selected entry's runs side by side in the results tab."""
        index = self._selected_or_say()
        if index is not None:
            self.window.finish_building()
            self.window.tabview.set("results")
            self.window.tabs["results"].sweep_picker.show(self.path, self.queue_file.entries[index].name)

    # ---- running ----------------------------------------------------------------------------------------

    def make_session(self, path: str):
        """The queue's session (trainer.session.queue_session) over the queue file at `path`."""
        from trainer.session import queue_session
        return queue_session(path, process=True)  # torch loads in a child process

    def jobs_changed(self) -> None:
        self.validate_now()

    def validate_now(self) -> list[str]:
        """Why the queue cannot start now (the device held by another job, an empty or refused queue)."""
        busy = None if self.runner.running else self.window.device_busy(asking=self.runner)
        self.reasons = [f"{busy}; wait for it or stop it"] * bool(busy) + [self.problem] * bool(self.problem)
        if not self.problem and not self.queue_file.entries:
            self.reasons.append("the queue is empty: add the current settings or a preset file")
        self.show_running()
        return self.reasons

    def show_running(self) -> None:
        """The buttons' states and the line saying why Start is off."""
        if not hasattr(self, "list"):
            return
        running, selected = self.runner.running, self.selected_entry() is not None
        set_enabled(self.start_button, not running and not self.reasons, START_COLOUR[0])
        set_enabled(self.stop_button, running and not self.runner.stopping, STOP_COLOUR[0])
        reconfigure(self.pause_box, state="normal" if self.path.expanduser().is_file() else "disabled")
        for button in (self.open_button, self.new_button):
            set_enabled(button, not running, self.file_colour)
        reconfigure(self.path_entry, state="disabled" if running else "normal")
        for text, button in self.buttons.items():
            needs = text not in ("Add current settings", "Add preset file…")
            set_enabled(button, selected or not needs, self.button_colour)
        if running:
            self.problem_line.set(f"The queue file: {self.problem}" if self.problem else "")
        else:
            self.problem_line.set(*problem_text(self.reasons, "Can't start the queue", "Start queue"))
        width = self.frame.winfo_width() - 40 if self.frame.winfo_width() > 1 else None
        self.problem_line.fit(width)
        self.message_line.fit(width)

    def start(self) -> bool:
        """Run the queue in a child process; False (the reason shown) when it cannot start."""
        self.refresh()
        if self.runner.running or self.reasons:
            return False
        self.message_line.show("")
        if hasattr(self.window.run_tab, "chart"):
            self.window.run_tab.clear()  # the run tab shows the queue's runs as they train
        if not self.runner.started(str(self.path.expanduser().absolute()), self.message_line.show):
            return False
        self.status_label.configure(text="Starting…")
        self.show_running()
        self.window.jobs_changed()
        return True

    def stop(self) -> None:
        """Stop the current run (it writes its backup) and the queue; Start queue continues it."""
        if self.runner.running:
            self.runner.stop()
            self.status_label.configure(text="Stopping: the current run writes its backup…")
            self.show_running()

    def pause_changed(self) -> None:
        """Pause after this run, ticked or not: the flag in QUEUE.state.json (trainer.tools.run_queue.set_pause)."""
        try:
            set_pause(self.path.expanduser(), bool(self.pause_box.get()))
        except (OSError, InputError) as e:
            self.message_line.show(f"Could not set the pause: {e}", "error")

    def _handle(self, event) -> None:
        if isinstance(event, ev.QueueRunState):
            self.records[event.name] = RunState(event.status, event.message, event.final_loss,
                                                event.validation_loss, event.model, event.workspace)
            if event.status == "running":
                self.current = event.name
                self.status_label.configure(text=f"Run {event.name}: starting…")
            if hasattr(self, "list") and event.name not in self.list.run_items:  # the file changed: the runner
                self.refresh()                                                       # took its new runs
            elif hasattr(self, "list"):
                self.list.show_run(event.name)
        elif isinstance(event, ev.Progress):
            run = f"Run {self.current}: step" if self.current else "Step"
            reconfigure(self.status_label, text=f"{run} {event.step}/{event.total_steps} · loss "
                                                f"{event.smooth_loss:.4g}")
        elif isinstance(event, ev.RunFinished):
            self.last_finished, self.current = event, ""
            self.status_label.configure(text="")
            self.message_line.show(event.message or event.outcome, LEVELS.get(event.outcome, "error"))
            self.refresh()
            try:
                self.pause_box.select() if read_state(self.path.expanduser()).pause_after_current else \
                    self.pause_box.deselect()
            except InputError:
                pass

    def _to_bottom_bar(self, event) -> None:
        """The current run's progress to the bottom bar (its bars, speed and status), as a training's; the queue's
        runs starting and the queue's end in its message line."""
        bar = self.window.bottom
        if isinstance(event, (ev.Progress, ev.RunStarted, ev.Status)):
            bar.handle(event)
        elif isinstance(event, ev.QueueRunState) and event.status == "running":
            bar.reset_progress()
            bar.show_message(f"Queue: run {event.name} is training", "info")
        elif isinstance(event, ev.RunFinished):
            bar.reset_progress()
            bar.show_status("Queue stopped." if event.outcome == "stopped" else "Queue done.")
            bar.show_message(self._queue_words(event), LEVELS.get(event.outcome, "error"))

    @staticmethod
    def _queue_words(event: ev.RunFinished) -> str:
        """How the queue ended, once prefixed "Queue:"."""
        text = event.message or event.outcome
        return text if text.lower().startswith("queue") else f"Queue: {text}"

    def _to_run_tab(self, event) -> None:
        """The current run's training events to the run tab's chart, samples and log; each run draws anew."""
        tab = self.window.run_tab
        if not hasattr(tab, "chart"):
            return
        if isinstance(event, ev.QueueRunState):
            if event.status == "running":
                tab.chart.stale = tab.gallery.stale = True
                tab.log.append("info", f"Queue: run {event.name}")
            elif event.name == self.current:  # a completed run's own last line already said how it ended
                tab.log.append(LEVELS.get(event.status, "error"), f"Queue: run {event.name} {event.status}"
                               + (f": {event.message}" if event.message and event.status != "completed" else ""))
        elif isinstance(event, ev.RunFinished):
            tab.chart.stale = tab.gallery.stale = True
            tab.log.append(LEVELS.get(event.outcome, "error"), self._queue_words(event))
        else:
            for view in (tab.chart, tab.gallery, tab.log):
                view.handle(event)
