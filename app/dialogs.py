"""The questions the window asks the user (file dialogs, confirmations, choices); tests pass a stub with the same
methods."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path

import customtkinter as ctk

from app.widgets import bury, close_on_escape

PRESET_TYPES = [("SeaChange presets", "*.json"), ("All files", "*")]
SPEC_TYPES = [("SeaChange tool specs", "*.json"), ("All files", "*")]


class Dialogs:
    """Every question the window asks the user. Tests pass their own object with the same methods."""

    def __init__(self, parent: tk.Misc):
        self.parent = parent
        self.folder = Path.cwd()  # where the next file dialog starts when the question names no folder

    def confirm(self, title: str, message: str) -> bool:
        """Yes or No (Escape and the close box: No)."""
        return ChoiceDialog(self.parent, title, message, ["Yes"], cancel="No").wait() == "Yes"

    def choose(self, title: str, message: str, options: list[str], cancel: str = "Cancel") -> str | None:
        """Ask with one button per option, then a `cancel` button; Escape and the close box cancel too. Returns
        the chosen option's text, or None when cancelled. Modal: the window waits for the answer."""
        return ChoiceDialog(self.parent, title, message, options, cancel).wait()

    def _pick(self, title: str, mode: str, folder: Path | None = None, filetypes=(), extension: str = "",
              name: str = "") -> str | None:
        """A FileDialog's answer (see app.file_dialog); starts in `folder`, else where the last one ended."""
        from app.file_dialog import FileDialog
        dialog = FileDialog(self.parent, title, mode, folder or self.folder, list(filetypes), extension, name)
        chosen = dialog.wait()
        self.folder = dialog.folder
        return chosen

    def ask_open_preset(self) -> str | None:
        return self._pick("Load preset", "open", filetypes=PRESET_TYPES)

    def ask_save_preset(self) -> str | None:
        return self._pick("Save preset as", "save", filetypes=PRESET_TYPES, extension=".json")

    def browse(self, kind: str, name: str, current: str) -> str | None:
        """A path picker's Browse…: a folder, a file, or (kind "path") a model file or diffusers folder."""
        start = Path(current).expanduser() if current else Path.cwd()
        folder = start if start.is_dir() else start.parent if start.parent.is_dir() else Path.cwd()
        file_name = "" if start.is_dir() else start.name
        if kind == "dir":
            return self._pick("Choose a folder", "dir", folder)
        if name == "output_png":
            return self._pick("Export the grid to", "save", folder, [("PNG", "*.png")], ".png", file_name)
        if name.startswith("output"):
            return self._pick("Write the model to", "save", folder,
                              [("Single file", "*.safetensors"), ("All", "*")], name=file_name)
        if kind == "path":
            chosen = self._pick("Choose a .safetensors or .ckpt file, or the model_index.json of a diffusers "
                                "folder", "open", folder, [("Models", "*.safetensors *.ckpt model_index.json"),
                                                           ("All files", "*")])
            return str(Path(chosen).parent) if chosen and Path(chosen).name == "model_index.json" else chosen
        return self._pick("Choose a file", "open", folder, [("All files", "*")])

    def ask_open_spec(self, what: str) -> str | None:
        """A tool spec file to load; `what` names the tool ("generate-data", "compare")."""
        return self._pick(f"Load {what} spec", "open", filetypes=SPEC_TYPES)

    def ask_save_spec(self, what: str) -> str | None:
        return self._pick(f"Save {what} spec as", "save", filetypes=SPEC_TYPES, extension=".json")


class ModalDialog(ctk.CTkToplevel):
    """A themed window that asks one question: `answer(result)` closes it; Escape and the close box answer None;
    `wait()` blocks (running the Tk loop) until answered and returns `result`."""

    def __init__(self, parent: tk.Misc, title: str):
        super().__init__(parent)
        self.title(title)
        self.result = None
        close_on_escape(self, lambda: self.answer(None))
        self.transient(parent.winfo_toplevel())
        self.after(10, self.lift)  # CTkToplevel can open behind its parent on some window managers

    def answer(self, result) -> None:
        self.result = result
        try:
            self.grab_release()
        except tk.TclError:
            pass
        self.destroy()
        bury(self)  # its fonts and images are freed from the Tk thread

    def wait(self):
        """Block (running the Tk loop) until answered; returns `result`."""
        try:
            self.wait_visibility()
            self.grab_set()
        except tk.TclError:  # not viewable (no window manager): still modal enough, the loop waits below
            pass
        self.focus_force()
        self.wait_window()
        return self.result


class ChoiceDialog(ModalDialog):
    """A modal question with one button per option and a cancel button (Escape and the close box cancel too).
    `result` is the chosen option's text, None while unanswered or when cancelled."""

    WRAP = 560
    MAX_LINES = 24  # a longer message (a long list of changed files) is cut; the run log holds all of it

    def __init__(self, parent: tk.Misc, title: str, message: str, options: list[str], cancel: str = "Cancel"):
        super().__init__(parent, title)
        self.resizable(False, False)
        lines = message.splitlines()
        if len(lines) > self.MAX_LINES:
            message = "\n".join(lines[: self.MAX_LINES - 1] + [f"… and {len(lines) - self.MAX_LINES + 1} more lines "
                                                               "(the run's log has all of them)"])
        ctk.CTkLabel(self, text=title, font=ctk.CTkFont(size=15, weight="bold"), anchor="w").pack(
            fill="x", padx=20, pady=(16, 6))
        self.message = ctk.CTkLabel(self, text=message, anchor="w", justify="left", wraplength=self.WRAP)
        self.message.pack(fill="x", padx=20, pady=(0, 14))
        row = ctk.CTkFrame(self, fg_color="transparent")
        row.pack(fill="x", padx=20, pady=(0, 16))
        self.buttons: dict[str, ctk.CTkButton] = {}
        for option in options:  # no Return: an option may change files, so it takes a click
            self.buttons[option] = ctk.CTkButton(row, text=option, command=lambda o=option: self.answer(o))
            self.buttons[option].pack(side="left", padx=(0, 8))
        self.cancel_button = ctk.CTkButton(row, text=cancel, fg_color="transparent", border_width=1,
                                           command=lambda: self.answer(None))
        self.cancel_button.pack(side="right")
