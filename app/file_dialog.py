"""A file and folder picker in the window's theme: the folders and files of one folder (files filtered by type), Up,
Home and a typed location; when a folder is picked, thumbnails of the images in it. Modal, like the window's other
questions (app.dialogs)."""
from __future__ import annotations

import fnmatch
import os
import queue
import threading
import tkinter as tk
from pathlib import Path

import customtkinter as ctk

from app.dialogs import ModalDialog
from app.widgets import ERROR, MUTED, WARNING
from trainer.data.images import IMAGE_SUFFIXES

THUMB_PX = 92        # a thumbnail's longest side
MAX_THUMBS = 24      # the preview shows a folder's first images, not all of them
MAX_ENTRIES = 5000   # a folder lists this many entries at most (a typed name still finds the others)
COLUMNS = 4          # thumbnails per row
UNREADABLE = "#55595c"  # the square shown for an image that cannot be read
OK_TEXT = {"open": "Open", "save": "Save", "dir": "Choose folder"}


def theme_colour(widget: str, key: str) -> str:
    """A colour of the current CustomTkinter theme for a plain Tk widget (the theme keeps (light, dark) pairs)."""
    value = ctk.ThemeManager.theme[widget][key]
    if isinstance(value, (list, tuple)):
        return value[1] if ctk.get_appearance_mode() == "Dark" else value[0]
    return value


def theme_font(size: int = 13) -> tuple:
    """The theme's font family at `size` px, as a tuple (a CTkFont belongs to one Tk root)."""
    return ctk.ThemeManager.theme["CTkFont"]["family"], -size


def list_folder(folder: Path, patterns: list[str] | None) -> tuple[list[str], list[str]]:
    """The sub-folders and the files of `folder` whose names match one of the shell `patterns` (no files when
    `patterns` is None), each sorted by name ignoring case; hidden entries (a leading dot) are left out.
    Raises OSError when the folder cannot be read."""
    folders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link to nowhere, a file that went away
                continue
            if is_dir:
                folders.append(entry.name)
            elif patterns is not None and any(fnmatch.fnmatch(entry.name.lower(), p.lower()) for p in patterns):
                files.append(entry.name)
    return sorted(folders, key=str.lower), sorted(files, key=str.lower)


class ThumbnailLoader:
    """Reads the first `limit` images of a folder in a worker thread, as PIL images at most `size` px. The Tk
    side calls `take()`: (kind, value) pairs of the newest `load()` only: ("count", number of images),
    ("image", (name, image or None when unreadable)), ("error", reason), ("done", None)."""

    def __init__(self, size: int = THUMB_PX, limit: int = MAX_THUMBS):
        self.size, self.limit = size, limit
        self._results: queue.Queue = queue.Queue()
        self._token = 0

    def load(self, folder: Path) -> None:
        self._token += 1
        threading.Thread(target=self._work, args=(self._token, folder), daemon=True).start()

    def cancel(self) -> None:
        self._token += 1

    def take(self) -> list[tuple[str, object]]:
        found = []
        while True:
            try:
                token, kind, value = self._results.get_nowait()
            except queue.Empty:
                return found
            if token == self._token:
                found.append((kind, value))

    def _work(self, token: int, folder: Path) -> None:
        from trainer.data.images import open_image  # photos up to the trainer's limit, not Pillow's ~179 MP
        try:
            with os.scandir(folder) as entries:
                names = sorted((e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES)
                                and not e.name.startswith(".")), key=str.lower)
        except OSError as e:
            self._results.put((token, "error", e.strerror or str(e)))
            return
        self._results.put((token, "count", len(names)))
        for name in names[: self.limit]:
            if token != self._token:
                return
            try:
                with open_image(folder / name) as im:
                    im.draft("RGB", (self.size, self.size))
                    im = im.convert("RGB")
                    im.thumbnail((self.size, self.size))
            except (OSError, ValueError):  # unreadable, or beyond the trainer's size limit
                im = None
            self._results.put((token, "image", (name, im)))
        self._results.put((token, "done", None))


class FileDialog(ModalDialog):
    """Pick a file to open (mode "open"), a file to write (mode "save") or a folder (mode "dir"), starting in
    `folder`. `filetypes` are (label, "*.a *.b") pairs for the files listed; "save" adds `extension` to a name
    that has none and asks again before replacing a file; `name` is the file name to start with. `result` is
    the chosen path as a string, None when cancelled. Enter accepts, Escape cancels."""

    def __init__(self, parent: tk.Misc, title: str, mode: str, folder: str | Path,
                 filetypes: list[tuple[str, str]] | None = None, extension: str = "", name: str = ""):
        super().__init__(parent, title)
        if mode not in OK_TEXT:
            raise ValueError(f"mode must be one of {list(OK_TEXT)}, got {mode!r}")
        self.mode, self.extension = mode, extension
        self.filetypes = filetypes or [("All files", "*")]
        self.folder = Path(os.path.abspath(Path(folder).expanduser()))
        self.shown: list[tuple[str, bool]] = []  # what the list shows: (name, is a folder)
        self._replace: Path | None = None
        self._poll_id: str | None = None
        self.thumbnails: list[tk.Label] = []
        self._photos: list = []
        self._images_of = self.folder  # the folder the preview shows
        self.loader = ThumbnailLoader()
        screen_w, screen_h = self.winfo_screenwidth(), self.winfo_screenheight()
        width, height = (940, 600) if mode == "dir" else (700, 500)
        self.geometry(f"{min(width, screen_w - 60)}x{min(height, screen_h - 80)}")
        self.minsize(520, 360)
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        self._build_location()
        self._build_list()
        if mode == "dir":
            self._build_preview()
        self.status = ctk.CTkLabel(self, text="", anchor="w", text_color=MUTED)
        self.status.grid(row=2, column=0, columnspan=2, sticky="ew", padx=14)
        self._build_buttons(name)
        self.bind("<Return>", lambda _e: self.accept())
        self.bind("<KP_Enter>", lambda _e: self.accept())
        self.bind("<Alt-Up>", lambda _e: self.up())
        self.navigate(self.folder if self.folder.is_dir() else Path.home())
        (self.name_entry if mode == "save" else self.listbox).focus_set()

    # ---- layout -------------------------------------------------------------------------------------------

    def _build_location(self) -> None:
        bar = ctk.CTkFrame(self, fg_color="transparent")
        bar.grid(row=0, column=0, columnspan=2, sticky="ew", padx=12, pady=(12, 6))
        bar.grid_columnconfigure(2, weight=1)
        self.up_button = ctk.CTkButton(bar, text="↑ Up", width=64, command=self.up)
        self.up_button.grid(row=0, column=0, padx=(0, 6))
        self.home_button = ctk.CTkButton(bar, text="Home", width=64, command=lambda: self.navigate(Path.home()))
        self.home_button.grid(row=0, column=1, padx=(0, 6))
        self.location = ctk.CTkEntry(bar)
        self.location.grid(row=0, column=2, sticky="ew")
        self.location.bind("<Return>", self._go_to_typed)
        self.location.bind("<KP_Enter>", self._go_to_typed)

    def _build_list(self) -> None:
        frame = ctk.CTkFrame(self, fg_color=theme_colour("CTkEntry", "fg_color"))
        frame.grid(row=1, column=0, sticky="nsew", padx=(12, 6), pady=(0, 6))
        frame.grid_columnconfigure(0, weight=1)
        frame.grid_rowconfigure(0, weight=1)
        self.listbox = tk.Listbox(frame, activestyle="none", borderwidth=0, highlightthickness=0,
                                  selectmode="browse", exportselection=False, font=theme_font(),
                                  bg=theme_colour("CTkEntry", "fg_color"), fg=theme_colour("CTkLabel", "text_color"),
                                  selectbackground=theme_colour("CTkButton", "fg_color"), selectforeground="white")
        self.listbox.grid(row=0, column=0, sticky="nsew", padx=(8, 0), pady=6)
        scrollbar = ctk.CTkScrollbar(frame, command=self.listbox.yview)
        scrollbar.grid(row=0, column=1, sticky="ns", pady=4)
        self.listbox.configure(yscrollcommand=scrollbar.set)
        self.listbox.bind("<<ListboxSelect>>", lambda _e: self._selected())
        self.listbox.bind("<Double-Button-1>", lambda _e: self.open_selected())
        self.listbox.bind("<BackSpace>", lambda _e: self.up())

    def _build_preview(self) -> None:
        self.grid_columnconfigure(1, weight=1)
        frame = ctk.CTkFrame(self)
        frame.grid(row=1, column=1, sticky="nsew", padx=(6, 12), pady=(0, 6))
        frame.grid_columnconfigure(0, weight=1)
        frame.grid_rowconfigure(1, weight=1)
        self.preview_title = ctk.CTkLabel(frame, text="", anchor="w", justify="left", wraplength=400)
        self.preview_title.grid(row=0, column=0, sticky="ew", padx=10, pady=(6, 2))
        self._preview_bg = theme_colour("CTkFrame", "top_fg_color")
        self.preview = ctk.CTkScrollableFrame(frame, fg_color=self._preview_bg)
        self.preview.grid(row=1, column=0, sticky="nsew", padx=4, pady=(0, 4))

    def _build_buttons(self, name: str) -> None:
        row = ctk.CTkFrame(self, fg_color="transparent")
        row.grid(row=3, column=0, columnspan=2, sticky="ew", padx=12, pady=(4, 12))
        row.grid_columnconfigure(1, weight=1)
        if self.mode == "dir":
            self.chosen_label = ctk.CTkLabel(row, text="", anchor="w", text_color=MUTED)
            self.chosen_label.grid(row=0, column=0, columnspan=2, sticky="ew", padx=(0, 10))
        else:
            ctk.CTkLabel(row, text="Name").grid(row=0, column=0, padx=(0, 8))
            self.name_entry = ctk.CTkEntry(row)
            self.name_entry.grid(row=0, column=1, sticky="ew", padx=(0, 8))
            self.name_entry.insert(0, name)
            self.name_entry.bind("<Key>", lambda _e: self.listbox.selection_clear(0, "end"), add="+")
            labels = [f"{label} ({patterns})" for label, patterns in self.filetypes]
            self.filter_menu = ctk.CTkOptionMenu(row, values=labels, width=200, dynamic_resizing=False,
                                                 command=lambda _v: self.navigate(self.folder))
            self.filter_menu.grid(row=0, column=2, padx=(0, 10))
        self.cancel_button = ctk.CTkButton(row, text="Cancel", width=90, fg_color="transparent", border_width=1,
                                           command=lambda: self.answer(None))
        self.cancel_button.grid(row=0, column=3, padx=(0, 8))
        self.ok_button = ctk.CTkButton(row, text=OK_TEXT[self.mode], width=120, command=self.accept)
        self.ok_button.grid(row=0, column=4)

    # ---- moving about -----------------------------------------------------------------------------------------

    def patterns(self) -> list[str] | None:
        """The shell patterns of the chosen file type; None in a folder picker (it lists folders only)."""
        if self.mode == "dir":
            return None
        index = [f"{label} ({patterns})" for label, patterns in self.filetypes].index(self.filter_menu.get())
        return self.filetypes[index][1].split()

    def navigate(self, folder: Path) -> bool:
        """List `folder` (False, saying why, when it cannot be read: the list stays as it was)."""
        folder = Path(os.path.abspath(folder))
        try:
            folders, files = list_folder(folder, self.patterns())
        except OSError as e:
            self.say(f"Cannot open {folder}: {e.strerror or e}", ERROR)
            return False
        self.folder, self._replace = folder, None
        names = [(n, True) for n in folders] + [(n, False) for n in files]
        self.shown = names[:MAX_ENTRIES]
        self.listbox.delete(0, "end")
        if self.shown:
            self.listbox.insert("end", *[n + "/" if is_dir else n for n, is_dir in self.shown])
        if self.mode == "open":  # a name typed in the folder left behind
            self.name_entry.delete(0, "end")
        self.location.delete(0, "end")
        self.location.insert(0, str(folder))
        self.say(f"Showing the first {MAX_ENTRIES} of {len(names)} entries: type a name to pick another."
                 if len(names) > MAX_ENTRIES else "")
        self._selected()
        return True

    def up(self) -> None:
        """Go to the parent folder with the folder just left selected."""
        came_from = self.folder.name
        if self.folder.parent != self.folder and self.navigate(self.folder.parent):
            self.select(came_from)

    def select(self, name: str) -> None:
        """Select the entry called `name` in the list (if shown) and show it."""
        for i, (shown, _) in enumerate(self.shown):
            if shown == name:
                self.listbox.selection_clear(0, "end")
                self.listbox.selection_set(i)
                self.listbox.see(i)
                self.listbox.activate(i)
                break
        self._selected()

    def selection(self) -> tuple[str, bool] | None:
        """The selected entry: (name, is a folder), or None."""
        picked = self.listbox.curselection()
        return self.shown[picked[0]] if picked and picked[0] < len(self.shown) else None

    def _selected(self) -> None:
        picked = self.selection()
        if self.mode == "dir":
            target = self.target()
            self.chosen_label.configure(text=f"Chosen: {target}")
            self.show_images(target)
        elif picked is not None:
            self.name_entry.delete(0, "end")
            if not picked[1]:
                self.name_entry.insert(0, picked[0])

    def open_selected(self) -> None:
        """A folder opens, a file is accepted (double-click)."""
        picked = self.selection()
        if picked is None:
            return
        if picked[1]:
            self.navigate(self.folder / picked[0])
        else:
            self.accept()

    def _go_to_typed(self, _event=None) -> str:
        """Enter in the location: go to the folder typed, or accept a file (or a new folder) typed there."""
        path = Path(os.path.abspath(self.folder / Path(self.location.get().strip()).expanduser()))
        if path.is_dir() and path != self.folder:
            self.navigate(path)
        elif self.mode == "dir":  # the folder shown, or one that does not exist yet
            self.answer(str(path)) if path.parent.is_dir() else self.say(f"No folder {path.parent}", ERROR)
        elif path.is_dir():
            self.accept()
        elif self.mode == "open":
            self.answer(str(path)) if path.is_file() else self.say(f"No file {path}", ERROR)
        elif path.parent.is_dir() and self.navigate(path.parent):
            self.name_entry.delete(0, "end")
            self.name_entry.insert(0, path.name)
            self.accept()
        else:
            self.say(f"No folder {path.parent}", ERROR)
        return "break"

    def say(self, text: str, colour: str = MUTED) -> None:
        self.status.configure(text=text, text_color=colour)

    # ---- the answer ---------------------------------------------------------------------------------------

    def target(self) -> Path:
        """The folder a folder picker would answer: the selected sub-folder, else the folder shown."""
        picked = self.selection()
        return self.folder / picked[0] if picked and picked[1] else self.folder

    def accept(self) -> None:
        """OK or Enter: answer the chosen folder or file; a selected folder opens in a file picker, a missing
        file to open, or a file that a save would replace, is said first."""
        if self.mode == "dir":
            return self.answer(str(self.target()))
        picked, name = self.selection(), self.name_entry.get().strip()
        if picked and picked[1]:
            self.navigate(self.folder / picked[0])
            return
        if not name:
            return self.say("Choose a file, or type its name.", WARNING)
        path = Path(os.path.abspath(self.folder / Path(name).expanduser()))
        if path.is_dir():
            self.navigate(path)
            self.name_entry.delete(0, "end")
        elif self.mode == "open":
            self.answer(str(path)) if path.is_file() else self.say(f"No file {path.name} in {path.parent}", ERROR)
        else:
            if self.extension and not path.suffix:
                path = path.with_name(path.name + self.extension)
            if not path.parent.is_dir():
                self.say(f"No folder {path.parent}", ERROR)
            elif path.exists() and path != self._replace:
                self._replace = path
                self.say(f"{path.name} exists: press {OK_TEXT['save']} again to replace it.", WARNING)
            else:
                self.answer(str(path))

    def answer(self, result) -> None:
        self.loader.cancel()
        if self._poll_id is not None:
            self.after_cancel(self._poll_id)
            self._poll_id = None
        super().answer(result)

    # ---- thumbnails -------------------------------------------------------------------------------------------

    def show_images(self, folder: Path) -> None:
        """Thumbnails of the first images in `folder`, read off the Tk thread; they appear as they are read."""
        for label in self.thumbnails:
            label.destroy()
        self.thumbnails, self._photos, self._images_of = [], [], folder
        self.preview_title.configure(text=f"{folder.name or folder}: looking for images…")
        self.loader.load(folder)
        if self._poll_id is None:
            self._poll_id = self.after(30, self._poll)

    def _poll(self) -> None:
        from PIL import Image, ImageTk
        self._poll_id = None
        name = self._images_of.name or str(self._images_of)
        for kind, value in self.loader.take():
            if kind == "error":
                self.preview_title.configure(text=f"Cannot read {name}: {value}")
                return
            if kind == "done":
                return
            if kind == "count":
                shown = f" (the first {MAX_THUMBS} shown)" if value > MAX_THUMBS else ""
                self.preview_title.configure(text=f"{name}: {value} image{'s' * (value != 1)}{shown}" if value
                                             else f"{name}: no images")
            else:
                _file_name, image = value
                photo = ImageTk.PhotoImage(image or Image.new("RGB", (THUMB_PX, THUMB_PX), UNREADABLE), master=self)
                label = tk.Label(self.preview, bg=self._preview_bg, image=photo, borderwidth=0, width=THUMB_PX,
                                 height=THUMB_PX)  # px: each image centred in a square, so the grid lines up
                index = len(self.thumbnails)
                label.grid(row=index // COLUMNS, column=index % COLUMNS, padx=3, pady=3)
                self.thumbnails.append(label)
                self._photos.append(photo)
        self._poll_id = self.after(40, self._poll)
