"""The questions the window asks the user (file dialogs, confirmations, choices); tests pass a stub with the same
methods."""
from __future__ import annotations

import tkinter as tk
from pathlib import Path

import customtkinter as ctk

PRESET_TYPES = [("SeaChange presets", "*.json"), ("All files", "*")]
SPEC_TYPES = [("SeaChange tool specs", "*.json"), ("All files", "*")]


class Dialogs:
    """Every question the window asks the user. Tests pass their own object with the same methods."""

    def __init__(self, parent: tk.Misc):
        self.parent = parent

    def confirm(self, title: str, message: str) -> bool:
        from tkinter import messagebox
        return bool(messagebox.askyesno(title, message, parent=self.parent))

    def choose(self, title: str, message: str, options: list[str], cancel: str = "Cancel") -> str | None:
        """Ask with one button per option, then a `cancel` button; Escape and the close box cancel too. Returns
        the chosen option's text, or None when cancelled. Modal: the window waits for the answer."""
        return ChoiceDialog(self.parent, title, message, options, cancel).wait()

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
        if name == "output_png":
            return filedialog.asksaveasfilename(parent=self.parent, initialdir=folder, title="Export the grid to",
                                                defaultextension=".png", filetypes=[("PNG", "*.png")]) or None
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

    def ask_open_spec(self, what: str) -> str | None:
        """A tool spec file to load; `what` names the tool ("generate-data", "compare")."""
        from tkinter import filedialog
        return filedialog.askopenfilename(parent=self.parent, title=f"Load {what} spec", filetypes=SPEC_TYPES) \
            or None

    def ask_save_spec(self, what: str) -> str | None:
        from tkinter import filedialog
        return filedialog.asksaveasfilename(parent=self.parent, title=f"Save {what} spec as",
                                            defaultextension=".json", filetypes=SPEC_TYPES) or None


class ChoiceDialog(ctk.CTkToplevel):
    """A modal question with one button per option and a cancel button (Escape and the close box cancel too).
    `result` is the chosen option's text, None while unanswered or when cancelled."""

    WRAP = 560
    MAX_LINES = 24  # a longer message (a long list of changed files) is cut; the run log holds all of it

    def __init__(self, parent: tk.Misc, title: str, message: str, options: list[str], cancel: str = "Cancel"):
        super().__init__(parent)
        self.title(title)
        self.resizable(False, False)
        self.result: str | None = None
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
        for option in options:
            self.buttons[option] = ctk.CTkButton(row, text=option, command=lambda o=option: self.answer(o))
            self.buttons[option].pack(side="left", padx=(0, 8))
        self.cancel_button = ctk.CTkButton(row, text=cancel, fg_color="transparent", border_width=1,
                                           command=lambda: self.answer(None))
        self.cancel_button.pack(side="right")
        self.bind("<Escape>", lambda _e: self.answer(None))  # no Return: each option changes files, so a click
        self.protocol("WM_DELETE_WINDOW", lambda: self.answer(None))
        self.transient(parent.winfo_toplevel())
        self.after(10, self.lift)  # CTkToplevel can open behind its parent on some window managers

    def answer(self, option: str | None) -> None:
        self.result = option
        try:
            self.grab_release()
        except tk.TclError:
            pass
        self.destroy()

    def wait(self) -> str | None:
        """Block (running the Tk loop) until answered; returns `result`."""
        try:
            self.wait_visibility()
            self.grab_set()
        except tk.TclError:  # not viewable (no window manager): still modal enough, the loop waits below
            pass
        self.focus_force()
        self.wait_window()
        return self.result
