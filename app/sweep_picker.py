"""The results tab's sweep section: a queue file, one of its entries (or all) and a step; shows the entry's runs side
by side in the tab's grid, from the sample images the runs already wrote (trainer.tools.run_samples)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import customtkinter as ctk

from app.grid_view import GridView
from app.queue_list import values_text
from app.widgets import Group, TextField, Tooltip
from trainer.errors import InputError
from trainer.tools.run_queue import expand_entry, read_queue, read_state
from trainer.tools.run_samples import SideBySide, side_by_side

ALL = "all entries"
LAST = "last"


class SweepPicker(Group):
    """Queue file, entry and step pickers and Show. `grid_view` shows the result; `say(text, level)` says what
    went wrong or what was shown; `browse(current)` picks a queue file (None: cancelled); `default_path()` is the
    queue file to show while none was chosen here (the queue tab's)."""

    def __init__(self, master, grid_view: GridView, say: Callable[[str, str], None],
                 browse: Callable[[str], str | None], default_path: Callable[[], str]):
        super().__init__(master, "A queue's runs side by side (a column per run, a row per sample prompt)")
        self.grid_view, self.say, self.browse, self.default_path = grid_view, say, browse, default_path
        self.shown: SideBySide | None = None
        row = ctk.CTkFrame(self, fg_color="transparent")
        row.grid(row=self.take_row(), column=0, columnspan=2, sticky="ew", padx=12, pady=(2, 10))
        ctk.CTkLabel(row, text="Queue file").pack(side="left", padx=(0, 6))
        self.path_entry = TextField(row, width=300)
        self.path_entry.pack(side="left")
        for sequence in ("<Return>", "<FocusOut>"):
            self.path_entry.bind(sequence, lambda _e: self.read_entries(), add="+")
        ctk.CTkButton(row, text="Browse…", width=76, command=self._browse).pack(side="left", padx=(6, 14))
        ctk.CTkLabel(row, text="Entry").pack(side="left", padx=(0, 6))
        self.entry_menu = ctk.CTkOptionMenu(row, values=[ALL], width=200, dynamic_resizing=False)
        self.entry_menu.pack(side="left", padx=(0, 14))
        ctk.CTkLabel(row, text="Step").pack(side="left", padx=(0, 6))
        self.step_box = ctk.CTkComboBox(row, values=[LAST], width=100)
        self.step_box.set(LAST)
        self.step_box.pack(side="left", padx=(0, 14))
        self.show_button = ctk.CTkButton(row, text="Show side by side", width=140, command=self.show)
        self.show_button.pack(side="left")
        Tooltip(self.entry_menu, "The entry whose runs (a sweep's) become the columns; all entries: every run of "
                                 "the queue.")
        Tooltip(self.step_box, "last: each run's last samples; or the step to show (type it or pick one).")
        Tooltip(self.show_button, "Lay out the sample images the runs wrote in their workspaces (nothing is "
                                  "generated; export a grid with Run above).")

    def path(self) -> Path:
        """The queue file chosen here, else the queue tab's."""
        return Path(self.path_entry.get_raw().strip() or self.default_path()).expanduser()

    def _browse(self) -> None:
        chosen = self.browse(str(self.path()))
        if chosen:
            self.path_entry.show(chosen)
            self.read_entries()

    def read_entries(self) -> list[str]:
        """Offer the queue file's entries (and all entries); [] when it does not read (said)."""
        try:
            names = [entry.name for entry in read_queue(self.path()).entries]
        except InputError as e:
            self.say(f"Can't compare the queue's runs: {e}", "error")
            return []
        self.entry_menu.configure(values=names + [ALL])
        if self.entry_menu.get() not in names + [ALL]:
            self.entry_menu.set(names[0] if names else ALL)
        return names

    def runs(self) -> list[tuple[str, Path]]:
        """(column label, workspace) per run of the chosen entry (labelled by its sweep values) or of all entries
        (by entry name and sweep values); a run's workspace as the queue's state records it, else where the queue
        puts it. Raises InputError when the queue or the entry does not read."""
        path = self.path()
        queue_file = read_queue(path)
        try:
            records = read_state(path).runs
        except InputError:
            records = {}
        chosen = self.entry_menu.get()
        indices = [i for i, entry in enumerate(queue_file.entries) if chosen in (ALL, entry.name)]
        if not indices:
            raise InputError(f"{path}: no entry named {chosen!r}")
        columns = []
        for i in indices:
            for run in expand_entry(queue_file, i, path.absolute().parent, check_paths=False):
                label = "\n".join(([run.entry_name] if chosen == ALL else []) + [values_text(run.values, "\n")]
                                  * bool(run.values)) or run.name
                record = records.get(run.name)
                columns.append((label, Path(record.workspace) if record and record.workspace else run.workspace))
        return columns

    def show(self, path: str | Path | None = None, entry: str | None = None) -> SideBySide | None:
        """Show the runs side by side in the grid (`path` and `entry`, when given, chosen first); None, said, when
        there is nothing to show."""
        if path is not None:
            self.path_entry.show(str(path))
        names = self.read_entries()
        if entry is not None and entry in names:
            self.entry_menu.set(entry)
        text = self.step_box.get().strip() or LAST
        if text != LAST and not text.isdigit():
            self.say(f"Step: {text!r} is not a step; type a step number or {LAST}", "error")
            return None
        try:
            runs = self.runs()
        except InputError as e:
            self.say(f"Can't compare the queue's runs: {e}", "error")
            return None
        grid = side_by_side(runs, None if text == LAST else int(text))
        self.step_box.configure(values=[LAST] + [str(s) for s in grid.steps])
        if not grid.rows:
            self.say(f"No sample images in the runs' workspaces yet ({', '.join(str(w) for _, w in runs)}): "
                     "a run samples when its preset's sampling says so.", "warning")
            return None
        self.grid_view.layout(grid.rows, grid.columns)
        for (row, column), file in grid.cells.items():
            self.grid_view.set_cell(row, column, str(file))
        at = "each run's last samples" if text == LAST else f"step {text}"
        self.grid_view.title.configure(text=f"{self.entry_menu.get()}: {len(grid.columns)} runs × "
                                            f"{len(grid.rows)} prompts, {at}")
        self.say(f"{len(grid.columns)} runs of {self.path().name} side by side ({at}).", "info")
        self.shown = grid
        self.reveal()
        return grid

    def reveal(self) -> None:
        """Scroll the form's area (a CTkScrollableFrame, whose last section this is) to show this section: its
        scroll region first follows what the area holds now (other sections may have just been hidden)."""
        canvas = self.master._parent_canvas
        self.update_idletasks()
        canvas.configure(scrollregion=canvas.bbox("all"))
        canvas.yview_moveto(1.0)
