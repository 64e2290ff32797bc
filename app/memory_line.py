"""The training tab's GPU-memory line: how much GPU memory the preset as shown needs (`python -m trainer memory`,
run in a child process so that torch never loads in the window), a "VRAM (GiB)" entry for the card to compare
with (empty: the card the child detects) and a "Fit to my GPU" button that proposes the fastest settings that fit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable

import customtkinter as ctk

from app.form import Form, as_text, describe_problem, read
from app.recent import config_dir
from app.widgets import ERROR, MUTED, WARNING, Tooltip, fit_text, reconfigure
from trainer.config import preset_to_json
from trainer.fields import ConfigError, atomic_write_text, set_value
from trainer.tools.vram import amount as vram_amount
from trainer.tools.vram import a_card, usable_gib

COMMAND = (sys.executable, "-m", "trainer", "memory")  # the engine's estimate (trainer/tools/memory.py)
DEBOUNCE_MS = 1500  # after the last edit, before an estimate starts
POLL_MS = 100
WIDTH = 370  # px the line wraps at: the column's width
CARD_SIZES = ("4", "6", "8", "12", "16", "24")  # GiB: what Fit offers when no card is known
TITLE = "Fit to my GPU"


def amount(gib: float, exact: bool = False) -> str:
    """GiB in words (trainer.tools.vram.amount); a card's size as typed when `exact` ('7.5 GiB')."""
    return f"{gib:g} GiB" if exact else vram_amount(gib)


class EstimateJob:
    """One `trainer memory` child process on a snapshot of the preset (`preset_json`, as preset_to_json writes
    it), with `args` after the preset file ("--fit", "8"). Its stdout and stderr go to temporary files (a pipe
    that nobody reads could fill and stall the child)."""

    def __init__(self, preset_json: str, args: tuple[str, ...] = ()):
        fd, self.path = tempfile.mkstemp(prefix="seachange-memory-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(preset_json)
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.child = subprocess.Popen([*COMMAND, self.path, *args, "--json"], stdin=subprocess.DEVNULL,
                                      stdout=self.out, stderr=self.err, cwd=os.getcwd())

    def poll(self) -> tuple[dict | None, str] | None:
        """None while the child runs; then (its JSON object, "") or (None, the one line that says why it failed:
        its last "error: ..." line, else its last line)."""
        code = self.child.poll()
        if code is None:
            return None
        out, err = (f.seek(0) or f.read().decode("utf-8", "replace") for f in (self.out, self.err))
        self.kill()
        try:
            data = json.loads(out)
        except ValueError:
            data = None
        if isinstance(data, dict) and code in (0, 1):  # 1: --fit found nothing that fits (its message says so)
            return data, ""
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        said = [line for line in lines if line.startswith("error:")] or lines[-1:] or [f"exit code {code}"]
        return None, said[-1].removeprefix("error:").strip()

    def kill(self) -> None:
        """End the child now if it runs (a newer estimate replaces it, or the window closes); remove its files."""
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        for f in (self.out, self.err):
            f.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class MemoryLine(ctk.CTkFrame):
    """The line, the VRAM entry and the Fit button, for the preset of `form`. `changed()` after any edit or load:
    an estimate starts DEBOUNCE_MS after the last one, while `shown()`, one at a time (a newer one kills the older
    one), cached by the preset's JSON. `busy()` names a job that holds the device (a training): no estimate starts
    then, the child would take its CPU and maybe GPU memory. `choose` asks as Dialogs.choose does. `close()` when
    the window goes: no child is left running."""

    def __init__(self, master, form: Form, choose: Callable[..., str | None], shown: Callable[[], bool],
                 busy: Callable[[], str | None]):
        super().__init__(master, fg_color="transparent")
        self.form, self.choose, self.shown, self.busy = form, choose, shown, busy
        self.font, self.said = ctk.CTkFont(), ""
        self.label = ctk.CTkLabel(self, text="GPU memory: not estimated yet", anchor="w", justify="left",
                                  wraplength=WIDTH, text_color=MUTED, font=self.font)
        self.label.pack(anchor="w")
        row = ctk.CTkFrame(self, fg_color="transparent")
        row.pack(anchor="w", pady=(4, 0))
        ctk.CTkLabel(row, text="VRAM (GiB)").pack(side="left")
        self.vram_entry = ctk.CTkEntry(row, width=64, justify="right", placeholder_text="auto")
        self.vram_entry.pack(side="left", padx=(8, 12))
        self.fit_button = ctk.CTkButton(row, text=TITLE, width=120, command=self.fit)
        self.fit_button.pack(side="left")
        self._border = self.vram_entry.cget("border_color")
        Tooltip(self.label, self.details)
        Tooltip(self.vram_entry, "The memory of the graphics card you will train on, in GiB. Empty: this "
                                 "computer's card (none found: the line shows the estimate alone).")
        Tooltip(self.fit_button, "The fastest settings whose estimate fits the card (a smaller batch with more "
                                 "accumulation steps, gradient checkpointing, …), to apply or not.")
        self.cache: dict[str, dict] = {}  # preset JSON -> its estimate
        self.detected: float | None = None  # GiB of the card the child found
        self.job: EstimateJob | None = None
        self.job_key, self.job_fit = "", 0.0  # what the job estimates; the GiB it fits to (0: an estimate)
        self.proposal: dict | None = None  # the last Fit's answer: changes, described, estimate
        self._after: str | None = None
        self._poll_id: str | None = None
        self.settings = config_dir() / "memory.json"  # {"vram_gib": the entry's GiB or null}
        try:
            self._kept = json.loads(self.settings.read_text(encoding="utf-8"))["vram_gib"]
            self.vram_entry.insert(0, f"{self._kept:g}")
        except (OSError, ValueError, KeyError, TypeError):  # none kept yet, or a broken file
            self._kept = None
        for event in ("<KeyRelease>", "<FocusOut>"):
            self.vram_entry.bind(event, lambda _e: self.vram_changed(), add="+")

    # ---- the card ------------------------------------------------------------------------------------

    def stated(self) -> float | None:
        """The entry's GiB; None when empty; ValueError when it is not a positive number."""
        text = self.vram_entry.get().strip()
        if not text:
            return None
        if not 0 < float(text) < 10_000:
            raise ValueError(text)
        return float(text)

    def card(self) -> float | None:
        """The GiB to compare with: the entry's, else the detected card's; None when neither is known."""
        try:
            return self.stated() or self.detected
        except ValueError:
            return self.detected

    def vram_changed(self) -> None:
        """Remember a valid entry (in the window's settings folder) and compare the estimate with it."""
        try:
            value = self.stated()
        except ValueError:
            self.vram_entry.configure(border_color=ERROR)
            return self.say("GPU memory: VRAM (GiB) must be a number of GiB, e.g. 8 or 24", WARNING)
        self.vram_entry.configure(border_color=self._border)
        if value != self._kept:
            try:
                atomic_write_text(self.settings, json.dumps({"vram_gib": value}) + "\n")
                self._kept = value
            except OSError:
                pass  # a read-only home must not break the tab
        self.refresh()

    # ---- estimating ----------------------------------------------------------------------------------

    def changed(self) -> None:
        """The preset changed: a cached estimate shows at once, else one starts after DEBOUNCE_MS."""
        if preset_to_json(self.form.preset) in self.cache:
            return self.refresh()
        if self._after is not None:
            self.after_cancel(self._after)
        self._after = self.after(DEBOUNCE_MS, self.refresh)

    def refresh(self) -> None:
        """Show the estimate of the preset as it is now: from the cache, or start a child for it (not while the
        tab is hidden or the device is busy: `changed()`, the tab's showing and a job's end come back here)."""
        if self._after is not None:
            self.after_cancel(self._after)
            self._after = None
        if self.job is not None and self.job_fit:
            return  # a Fit runs; its answer refreshes
        problems = self.form.problems(check_paths=False) + [  # and the model: the estimate reads its configs
            p for p in self.form.problems(check_paths=True) if p.startswith("model.base_model:")
            and self.form.preset.model.base_model.strip()]  # none chosen yet: the engine sizes SD 1.5
        key = preset_to_json(self.form.preset)
        if problems or key in self.cache:
            self.stop_job()
            if problems:
                return self.say("GPU memory: not estimated until this is fixed: "
                                f"{describe_problem(problems[0], self.form.preset)}", WARNING)
            return self.show(self.cache[key])
        if self.job is not None and self.job_key == key or not self.shown():
            return
        busy = self.busy()
        if busy:
            self.stop_job()
            return self.say(f"GPU memory: estimated when the device is free ({busy})", MUTED)
        self.start_job(key)
        self.say("GPU memory: estimating…", MUTED)

    def start_job(self, key: str, fit: float = 0.0) -> None:
        """Run the engine on the preset JSON `key`: an estimate, or with `fit` (GiB) the settings that fit."""
        self.stop_job()
        self.job = EstimateJob(key, ("--fit", f"{fit:g}") if fit else ())
        self.job_key, self.job_fit = key, fit
        if fit:  # a search of seconds to minutes: it can be called off
            self.fit_button.configure(text="Cancel", command=self.cancel_fit)
        self._poll_id = self.after(POLL_MS, self._poll)

    def cancel_fit(self) -> None:
        """Call off a running Fit; the line shows the estimate again."""
        self.stop_job()
        self.refresh()

    def stop_job(self) -> None:
        """Kill the running child, if any (its answer is no longer wanted)."""
        if self._poll_id is not None:
            self.after_cancel(self._poll_id)
            self._poll_id = None
        if self.job is not None:
            self.job.kill()
            self.job, self.job_fit = None, 0.0
            self.fit_button.configure(text=TITLE, command=self.fit)

    def _poll(self) -> None:
        answer = self.job.poll()
        if answer is None:
            self._poll_id = self.after(POLL_MS, self._poll)
            return
        self._poll_id = None
        key, fit = self.job_key, self.job_fit
        self.stop_job()  # forgets the finished job
        data, reason = answer
        if data is None:
            return self.say(f"GPU memory: could not estimate: {reason}", WARNING)
        if data.get("vram_source") == "detected":
            self.detected = float(data["vram_gib"])
        if isinstance(data.get("estimate"), dict):
            self.cache[key] = data["estimate"]
        if fit:  # a modal question: the window may have closed meanwhile
            self.propose(data, fit, edited=key != preset_to_json(self.form.preset))
        if self.winfo_exists():
            self.refresh()

    # ---- showing -------------------------------------------------------------------------------------

    def show(self, estimate: dict) -> None:
        total, card = estimate["total_gib"], self.card()
        normal = ctk.ThemeManager.theme["CTkLabel"]["text_color"]
        what = "GPU memory (SD 1.5, no base model chosen yet)" if not self.form.preset.model.base_model.strip() \
            else "GPU memory"
        if card is None:
            return self.say(f"{what}: about {amount(total)}", normal)
        fits = total <= usable_gib(card)  # the CUDA context and the allocator keep some of the card
        self.say(f"{what}: about {amount(total)} of {amount(card, exact=True)} "
                 f"({'fits' if fits else 'does not fit'})", normal if fits else ERROR)

    def say(self, text: str, colour: Any) -> None:
        """Show `text` in two lines at most (the tooltip has all of it)."""
        self.said = text
        reconfigure(self.label, text=fit_text(self.font, text, WIDTH, lines=2), text_color=colour)

    def details(self) -> str:
        """The tooltip: the shown estimate's parts and the engine's notes, or all of what the line says."""
        estimate = self.cache.get(preset_to_json(self.form.preset))
        if estimate is None:
            return f"{self.said}\n\nHow much GPU memory a training with these settings needs, as the engine " \
                   "estimates it."
        parts = [f"{name.replace('_', ' ')}: {amount(gib)}" for name, gib in estimate.get("parts_gib", {}).items()]
        head = f"At batch size {estimate.get('batch_size')}, resolution {estimate.get('resolution')}:"
        return "\n".join([head, *parts, *estimate.get("notes", [])])

    # ---- Fit to my GPU -------------------------------------------------------------------------------

    def fit(self) -> None:
        """Find the fastest settings that fit the card (asking its size when none is known), then propose them."""
        if self.form.problems(check_paths=False):
            return self.refresh()  # the line says what to fix first
        try:
            self.stated()
        except ValueError:
            return self.vram_changed()  # the line says how to fix the entry
        if self.card() is None:
            size = self.choose(TITLE, "No graphics card was found here and VRAM (GiB) is empty. How much memory "
                               "does the card you will train on have? (Another size: type it into VRAM (GiB).)",
                               [f"{s} GiB" for s in CARD_SIZES])
            if size is None:
                return
            self.vram_entry.delete(0, "end")
            self.vram_entry.insert(0, size.split()[0])
            self.vram_changed()
        self.start_job(preset_to_json(self.form.preset), fit=self.card())
        self.say(f"GPU memory: finding the fastest settings that fit {amount(self.card(), exact=True)}…", MUTED)

    def propose(self, data: dict, card: float, edited: bool = False) -> None:
        """Show the Fit's answer; on Apply, set each changed field through the form. `edited`: the preset was
        edited while the Fit ran (Apply then sets only the fields listed, keeping the other edits)."""
        found = self.proposal = data.get("fit")
        if not found or not found.get("changes"):
            self.choose(TITLE, f"These settings already are the fastest that fit {a_card(card)}."
                        if found else data.get("message") or f"No settings fit {amount(card, exact=True)}.", [],
                        cancel="OK")
            return
        lines = "\n".join(f"• {line}" for line in self.change_lines(found))
        after = amount(found["estimate"]["total_gib"])
        note = ("\n\nYou edited the settings while this was searched: Apply sets only the fields above."
                if edited else "")
        if self.choose(TITLE, f"For a {amount(card, exact=True)} card:\n{lines}\n\nGPU memory then: about "
                       f"{after}.{note}", ["Apply"]) == "Apply":
            self.apply(found["changes"], None if edited else found["estimate"])

    def change_lines(self, found: dict) -> list[str]:
        """The Fit's changes in the form's words ('Batch size: 8 → 2', 'Gradient checkpointing: off → on'), then
        the engine's notes (the batch size kept in images per step)."""
        def words(value):
            return ("on" if value else "off") if isinstance(value, bool) else str(value)
        lines, changes = [], found["changes"]
        for path, value in changes.items():
            try:
                lines.append(f"{self.form.meta_of(path).get('label') or path}: "
                             f"{words(read(self.form.preset, path))} → {words(value)}")
            except (ConfigError, KeyError, AttributeError):  # a path this window does not know
                lines.append(f"{path}: {words(value)}")
        return lines + list(found.get("notes", []))  # "described" names the same switches as these lines

    def apply(self, changes: dict[str, Any], estimate: dict | None = None) -> None:
        """Set each dotted path to its value as an edit of its widget would (parsed, validated, marked unsaved);
        a path no widget shows is set in the preset and announced to the form. `estimate` (the Fit's, for exactly
        these settings) is cached for the result."""
        failed = []
        for path, value in changes.items():
            bindings = self.form.bindings_for(path)
            try:
                if bindings:
                    bindings[0].widget.show(as_text(value, bindings[0].hint))  # its trace: the form's _edited
                else:
                    set_value(self.form.preset, path, value)
                    self.form.on_change(path)
            except ConfigError as e:
                failed.append(str(e))
        if estimate is not None and not failed and not self.form.parse_errors:
            self.cache[preset_to_json(self.form.preset)] = estimate
        if failed:
            return self.say(f"GPU memory: could not apply {failed[0]}", WARNING)
        self.changed()

    def close(self) -> None:
        """The window closes: no more timers, no child left running."""
        if self._after is not None:
            self.after_cancel(self._after)
            self._after = None
        self.stop_job()
