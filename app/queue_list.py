"""The queue tab's list: each entry of a queue (trainer/tools/run_queue.py) with its runs under it (a sweep's runs
as rows of their own), each run's status, final loss and model, a cell cut by its column shown whole on hover; and
the words for entries and runs it uses."""
from __future__ import annotations

import itertools
from pathlib import Path
from tkinter import font as tkfont
from tkinter import ttk

import customtkinter as ctk

from app.run_widgets import AXIS_TEXT, CHART_BG
from app.widgets import ERROR, MUTED, SUCCESS, WARNING, Tooltip
from trainer.errors import InputError
from trainer.tools.run_queue import (QueueEntry, QueueFile, RunState, check_queue, key_labels, read_queue, read_state,
                                     run_name, value_text)

COLUMNS = (("settings", "Sweep values · preset", 280), ("status", "Status", 190), ("loss", "Final loss", 120),
           ("model", "Model", 420))
STATUS_COLOURS = {"completed": SUCCESS, "failed": ERROR, "stopped": WARNING, "interrupted": WARNING,
                  "running": "#58a6ff",
                  "pending": "#dcdcdc"}


def sweep_runs(entry: QueueEntry) -> list[dict]:
    """An entry's sweep values per run, in the order the queue runs them (one empty dict without a sweep)."""
    return [dict(zip(entry.sweep, combination)) for combination in itertools.product(*entry.sweep.values())]


def values_text(values: dict, separator: str = ", ") -> str:
    """A run's sweep values as its name says them: 'learning_rate=1e-06, epochs=5'; with another `separator` (a
    line break: a grid's column label) each value is written 'learning_rate = 1e-06', so that it wraps there."""
    labels = key_labels(list(values))
    equals = "=" if separator == ", " else " = "
    return separator.join(f"{labels[k]}{equals}{value_text(v)}" for k, v in values.items())


def entry_text(entry: QueueEntry) -> str:
    """What an entry runs, in a line: its preset, fixed overrides and sweep."""
    parts = [f"preset {entry.preset}" if entry.preset else "settings from the window"]
    parts += [f"set {values_text(entry.set)}"] * bool(entry.set)
    labels = key_labels(list(entry.sweep))
    parts += [f"sweep {labels[k]}: {', '.join(value_text(v) for v in vs)}" for k, vs in entry.sweep.items()]
    return " · ".join(parts)


def loss_text(record: RunState) -> str:
    """The final smoothed loss, and the last validation loss when the run measured one."""
    if record.final_loss is None:
        return ""
    return f"{record.final_loss:.4g}" + (f" (val {record.validation_loss:.4g})"
                                         if record.validation_loss is not None else "")


def read_checked(path: Path) -> tuple[QueueFile, dict[str, RunState], str, bool]:
    """What the tab shows of the queue file at `path`: (its entries, its runs' records, the first problem that
    keeps it from running or "", whether the file is there but does not read, so that an edit would lose it). The
    problem is read_queue's, read_state's or check_queue's (every run checked as the runner will), naming the
    file; a missing file is an empty queue with no problem."""
    queue_file, records, problem, unreadable = QueueFile(), {}, "", False
    if not path.exists():
        return queue_file, records, problem, unreadable
    try:
        queue_file = read_queue(path)
    except InputError as e:
        unreadable, problem = True, str(e)
    try:
        records = read_state(path).runs
    except InputError as e:
        problem = problem or str(e)
    if queue_file.entries and not problem:
        try:
            check_queue(path)
        except InputError as e:
            problem = str(e)
    if problem and path.name not in problem:
        problem = f"{path.name}: {problem}"
    return queue_file, records, problem, unreadable


class QueueList(ctk.CTkFrame):
    """A ttk.Treeview of the entries (items "e0", "e1", …) and their runs. An entry without a sweep is one run: its
    row shows that run. `entry_of` maps each item to its entry's index, `run_items` each run's name to its item;
    `records` (run name -> RunState) are the runs' states shown. `on_select()` runs when the selection changes."""

    def __init__(self, master, on_select, **kw):
        super().__init__(master, **kw)
        self.queue_file, self.records = QueueFile(), {}
        self.entry_of: dict[str, int] = {}
        self.run_items: dict[str, str] = {}
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(0, weight=1)
        style = ttk.Style(self)
        style.configure("Queue.Treeview", background=CHART_BG, fieldbackground=CHART_BG, foreground="#dcdcdc",
                        rowheight=26, borderwidth=0)
        style.configure("Queue.Treeview.Heading", background="#2b2d31", foreground=AXIS_TEXT, relief="flat")
        style.map("Queue.Treeview", background=[("selected", "#1f538d")], foreground=[("selected", "white")])
        style.map("Queue.Treeview.Heading", background=[("active", "#34363b")])
        self.tree = ttk.Treeview(self, style="Queue.Treeview", columns=[c for c, _, _ in COLUMNS],
                                 selectmode="browse")
        self.tree.heading("#0", text="Entry · run", anchor="w")
        self.tree.column("#0", width=330, stretch=False)
        for name, heading, width in COLUMNS:
            self.tree.heading(name, text=heading, anchor="w")
            self.tree.column(name, width=width, stretch=name == "model")
        for status, colour in STATUS_COLOURS.items():
            self.tree.tag_configure(status, foreground=colour)
        self.tree.grid(row=0, column=0, sticky="nsew", padx=(6, 0), pady=6)
        bar = ctk.CTkScrollbar(self, command=self.tree.yview)
        bar.grid(row=0, column=1, sticky="ns", pady=6)
        self.tree.configure(yscrollcommand=bar.set)
        self.tree.bind("<<TreeviewSelect>>", lambda _e: on_select())
        self.tip = Tooltip(self.tree, self.cut_text_under_pointer)
        self._tip_cell: tuple[str, str] = ("", "")
        self.tree.bind("<Motion>", self._pointer_moved, add="+")
        self.empty_label = ctk.CTkLabel(self, text="No entries yet: add the current settings or a preset file, then "
                                                   "sweep an entry to try several values.", text_color=MUTED,
                                        fg_color=CHART_BG)  # on the list's background

    def cut_text(self, item: str, column: str) -> str:
        """The whole text of the cell of `item` in `column` ("#0" the entry or run name, else a COLUMNS name) when
        the column is too narrow to show it ("" when it shows whole): a sweep's long model paths differ at the end."""
        text = str(self.tree.item(item, "text") if column == "#0" else self.tree.set(item, column))
        font = tkfont.nametofont("TkDefaultFont")
        indent = 20 * (1 + bool(self.tree.parent(item))) if column == "#0" else 0  # the tree's own indent
        return text if text and font.measure(text) + indent + 8 > self.tree.column(column, "width") else ""

    def cut_text_under_pointer(self) -> str:
        x = self.tree.winfo_pointerx() - self.tree.winfo_rootx()
        y = self.tree.winfo_pointery() - self.tree.winfo_rooty()
        item, column = self.tree.identify_row(y), self.tree.identify_column(x)
        if not item or not column:
            return ""
        return self.cut_text(item, "#0" if column == "#0" else COLUMNS[int(column[1:]) - 1][0])

    def _pointer_moved(self, event) -> None:
        """Onto another cell: its own tip (if it is cut) after the usual delay."""
        cell = (self.tree.identify_row(event.y), self.tree.identify_column(event.x))
        if cell != self._tip_cell:
            self._tip_cell = cell
            self.tip.hide()
            self.tip.schedule()

    def fill(self, queue_file: QueueFile, records: dict[str, RunState]) -> None:
        """Show `queue_file`'s entries and runs with `records`; the selected entry stays selected."""
        selected = self.selected_entry()
        self.queue_file, self.records = queue_file, records
        self.tree.delete(*self.tree.get_children())
        self.entry_of.clear()
        self.run_items.clear()
        for i, entry in enumerate(queue_file.entries):
            item = self.tree.insert("", "end", iid=f"e{i}", text=entry.name, open=True)
            self.entry_of[item] = i
            for values in sweep_runs(entry):
                name = run_name(entry.name, values)
                run_item = self.tree.insert(item, "end", text=name) if values else item
                self.entry_of[run_item] = i
                self.run_items[name] = run_item
                self.show_run(name, values_text(values) if values else entry_text(entry))
            if entry.sweep:
                self.show_entry(i)
        if selected is not None and self.tree.exists(f"e{selected}"):
            self.tree.selection_set(f"e{selected}")
        if queue_file.entries:
            self.empty_label.place_forget()
        else:
            self.empty_label.place(relx=0.5, y=70, anchor="n")

    def show_run(self, name: str, settings: str | None = None) -> None:
        """Show run `name`'s record (and, for a sweep's run, its entry's count)."""
        item = self.run_items[name]
        record = self.records.get(name, RunState())
        status = record.status + (f": {record.message.splitlines()[0]}" if record.status == "failed"
                                  and record.message else "")
        settings = self.tree.set(item, "settings") if settings is None else settings
        self.tree.item(item, values=(settings, status, loss_text(record), record.model), tags=(record.status,))
        if self.tree.parent(item):
            self.show_entry(self.entry_of[item])

    def show_entry(self, index: int) -> None:
        """A swept entry's row: what it runs, and how many of its runs completed."""
        entry = self.queue_file.entries[index]
        names = [run_name(entry.name, values) for values in sweep_runs(entry)]
        statuses = [self.records.get(n, RunState()).status for n in names]
        done = statuses.count("completed")
        tag = "running" if "running" in statuses else "completed" if done == len(names) else "pending"
        self.tree.item(f"e{index}", values=(entry_text(entry), f"{done} of {len(names)} completed", "", ""),
                       tags=(tag,))

    def selected_entry(self) -> int | None:
        """The index of the entry selected (or of the selected run's entry); None when nothing is."""
        selection = self.tree.selection()
        return self.entry_of.get(selection[0]) if selection else None

    def select_entry(self, index: int) -> None:
        """Select entry `index` and scroll it into view."""
        if self.tree.exists(f"e{index}"):
            self.tree.selection_set(f"e{index}")
            self.tree.see(f"e{index}")
