"""Caption a concept's images with a model (trainer.tools.captioning) from the concepts tab: the caption spec's form,
what a run would write, a preview of a few proposed captions (nothing written) and the run itself, a device job."""
from __future__ import annotations

import copy
import queue
import threading
from dataclasses import fields
from pathlib import Path
from typing import Callable

import customtkinter as ctk
from PIL import Image

from app.bottom_bar import DISABLED, START_COLOUR, STOP_COLOUR, UNCUT, Line, MessageLine, problem_text
from app.form import Form, describe_problem
from app.recent import LastSpec
from app.tabs.common import Columns
from app.tool_runner import ToolRunner
from app.widgets import (GROUP_COLOUR, MUTED, WARNING, RootImage, Tooltip, bury, close_on_escape, load_thumbnail,
                         reconfigure, show_image_window)
from trainer import events as ev
from trainer.config import ConceptConfig, Preset
from trainer.data.captions import TXT_SOURCES
from trainer.errors import InputError
from trainer.specs import DEFAULT_CAPTIONER_MODELS, DEFAULT_TAGGER_MODEL, CaptionSpec, validate_spec
from trainer.tools.caption_models import REPO_ID, captioner_problem, tagger_problem

GROUPS = [("What is written", ["mode", "separator", "prefix", "suffix", "caption_extension"]),
          ("Captioner", ["captioner", "captioner_model", "prompt", "max_new_tokens"]),
          ("Tagger", ["tagger", "tagger_model", "tag_threshold", "character_threshold", "replace_underscores"]),
          ("Running", ["batch_size", "device", "dtype", "workspace_dir"])]
# The concept's own fields: shown in the heading, edited in the concept's tab.
CONCEPT_FIELDS = ("image_dir", "include_subfolders", "mask_suffix")
# Fields the view remembers for the next concept (the model choices); mode, prefix and suffix start afresh.
REMEMBERED = ("separator", "captioner", "captioner_model", "prompt", "max_new_tokens", "tagger", "tagger_model",
              "tag_threshold", "character_threshold", "replace_underscores", "batch_size", "device", "dtype",
              "caption_extension")
APPLIES = {"separator": lambda s: s.mode in ("prepend", "append"), **{
    name: lambda s: s.captioner != "none" for name in ("captioner_model", "prompt", "max_new_tokens")}, **{
    name: lambda s: s.tagger != "none" for name in ("tagger_model", "tag_threshold", "character_threshold",
                                                     "replace_underscores")}}
PREVIEW_COUNT, CARDS, THUMB = 4, 4, 100
STATUS_WIDTH = 440  # px: the status line beside the buttons
PLAN_DEBOUNCE_MS, POLL_MS = 300, 50
SESSION_IN_CHILD = True  # the window's way: torch loads in a child process (tests may run the job in a thread)


def plan_summary(spec: CaptionSpec) -> dict:
    """What a run of `spec` would do, counted as trainer.tools.captioning.plan counts it (no model loads): "todo"
    images, "with_caption" of those (replaced in mode all, extended in prepend / append), "kept" as they are and
    the engine's "notes"; "error" says why it cannot tell. Plain data in and out: it runs in a worker thread."""
    from trainer.tools import captioning
    if not spec.image_dir.strip() or not Path(spec.image_dir).expanduser().is_dir():
        return {"error": f"{spec.image_dir or '(no folder)'} is not a folder"}
    notes: list[str] = []
    try:
        todo, kept = captioning.plan(spec, lambda e: notes.append(e.text) if isinstance(e, ev.Log) else None)
    except (InputError, OSError) as e:
        return {"error": str(e)}
    return {"todo": len(todo), "with_caption": sum(bool(w.old.lines) for w in todo), "kept": kept, "notes": notes}


def plan_text(summary: dict, mode: str) -> tuple[str, str]:
    """(what a run would write, in words; the warning when mode all replaces existing captions, or "")."""
    if "error" in summary:
        return "", ""
    todo, old, kept = summary["todo"], summary["with_caption"], summary["kept"]
    new = todo - old
    if not todo:
        return f"Nothing to caption: all {kept} image(s) keep their captions as they are.", ""
    if mode == "missing":
        return f"{new} image(s) without a caption will get one; {kept} keep theirs.", ""
    left = f"; {kept} left as they are" if kept else ""
    if mode == "all":
        warning = (f"⚠ Mode all replaces {old} existing caption(s) of this concept, those written by hand too. "
                   "Choose missing to keep them.") if old else ""
        return f"{todo} image(s) will be captioned: {old} caption(s) replaced, {new} new{left}.", warning
    where = "before" if mode == "prepend" else "after"
    return f"{old} caption(s) get the new text {where} each line, {new} image(s) without one get it alone{left}.", ""


def model_problems(spec: CaptionSpec) -> list[str]:
    """The engine's refusals of the folder and model fields as 'field: reason' (what trainer.tools.captioning.
    check_inputs and caption_models.model_folder say), all of them; a repo id is checked when it is fetched."""
    problems = []
    if spec.image_dir.strip() and not Path(spec.image_dir).expanduser().is_dir():
        problems.append(f"image_dir: {Path(spec.image_dir).expanduser()} is not a folder")
    for field, active, check in (("captioner_model", spec.captioner != "none",
                                  lambda p: captioner_problem(p, spec.captioner)),
                                 ("tagger_model", spec.tagger != "none", tagger_problem)):
        name = getattr(spec, field).strip()
        path = Path(name).expanduser()
        if not active or not name:
            continue
        if path.is_dir():
            problems += [f"{field}: {reason}" for reason in [check(path)] if reason]
        elif path.exists() or not REPO_ID.match(name):
            problems.append(f"{field}: {name} is not a folder here, nor a Hugging Face repo id (owner/name)")
    return problems


def download_note(spec: CaptionSpec) -> str:
    """Which of the spec's models are repo ids (not folders here) and where they will be downloaded; ""."""
    names = [name for active, name in ((spec.captioner != "none", spec.captioner_model.strip()
                                        or DEFAULT_CAPTIONER_MODELS.get(spec.captioner, "")),
                                       (spec.tagger != "none", spec.tagger_model.strip() or DEFAULT_TAGGER_MODEL))
             if active and REPO_ID.match(name) and not Path(name).expanduser().exists()]
    if not names:
        return ""
    from huggingface_hub import constants  # light: no torch
    return (f"⬇ {' and '.join(names)} {'is' if len(names) == 1 else 'are'} not a folder here: downloaded once from "
            f"Hugging Face into {constants.HF_HUB_CACHE} at the first Preview or run (unless already there); "
            "later runs use that copy.")


class CaptionModelsView(ctk.CTkToplevel):
    """Caption one concept's images with a model. The form is the CaptionSpec's (image folder and subfolders are
    the concept's); Preview proposes PREVIEW_COUNT captions and writes nothing; Caption all writes them (Stop,
    then Resume goes on where it stopped). Both run as a device job of the window (one at a time). After a run,
    `on_changed()` runs (the concepts tab rescans)."""

    def __init__(self, window, concept: ConceptConfig, preset: Preset, on_changed: Callable[[], None] | None = None):
        super().__init__(window)
        self.window, self.concept, self.on_changed = window, concept, on_changed
        self.last_spec = LastSpec(window.recent.path.with_name("last-caption.json"))
        remembered = (self.last_spec.read(CaptionSpec) or (CaptionSpec(), {}))[0]
        spec = CaptionSpec(**{name: getattr(remembered, name) for name in REMEMBERED})  # journals: the engine's
        self.form = Form(spec, self._edited, window.dialogs.browse, validator=self.spec_problems)
        self.trigger, self._filled_prefix = preset.training.embedding_placeholder.strip(), ""
        self.runner = ToolRunner("Captioning", self._make_session, window.run_finished, lambda spec: True)
        self.runner.subscribe(self._handle)
        window.tool_runners.append(self.runner)
        self.previewing = self.resumable = self._close_pending = False
        self.reasons: list[str] = []
        self.summary: dict | None = None
        self.cards: list[tuple[str, str, bool]] = []  # (image, caption, skipped) shown in the strip
        self._thumbs: dict[str, object] = {}
        self._shown: dict[str, bool] = {}  # APPLIES field -> whether its row is shown
        self._plans: queue.Queue = queue.Queue()
        self._plan_token, self._plan_after, self._poll_after, self._validate_id = 0, None, None, None
        self.title(f"Caption with a model — {concept.name or Path(concept.path).name}")
        self.geometry(f"{min(1120, self.winfo_screenwidth() - 60)}x{min(860, self.winfo_screenheight() - 60)}")
        self.grid_columnconfigure(0, weight=1)
        self.grid_rowconfigure(1, weight=1)
        self._build()
        close_on_escape(self, self.close)
        self._sync_concept()
        self._follow_trigger()
        self.request_plan()
        self.validate_now()
        self.after(150, self.lift)

    @property
    def spec(self) -> CaptionSpec:
        return self.form.preset

    # ---- layout -------------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.heading = ctk.CTkLabel(self, text="", anchor="w", justify="left", wraplength=1060)
        self.heading.grid(row=0, column=0, sticky="ew", padx=14, pady=(10, 2))
        area = ctk.CTkScrollableFrame(self, fg_color="transparent")
        area.grid(row=1, column=0, sticky="nsew", padx=4)
        names = [f.name for f in fields(CaptionSpec) if f.name not in CONCEPT_FIELDS]
        listed = {name for _, group in GROUPS for name in group}
        more = [("More", [n for n in names if n not in listed])] if set(names) - listed else []
        columns = Columns(area, 2)
        for title, group_names in GROUPS + more:  # as ToolTab lays out a spec: labels and tips from the metadata
            group = columns.group(title, len(group_names))
            for name in group_names:
                self.form.field(group, name)
            group.pad_bottom()
        self.trigger_note = ctk.CTkLabel(self.form.bindings_for("prefix")[0].labelled.label.master, text="",
                                         text_color=MUTED, font=ctk.CTkFont(size=11), anchor="w")
        self.trigger_note.grid(row=99, column=0, columnspan=2, sticky="w", padx=12)
        info = ctk.CTkFrame(self, fg_color="transparent")
        info.grid(row=2, column=0, sticky="ew", padx=14, pady=(4, 0))
        self.plan_label = ctk.CTkLabel(info, text="Counting the captions…", anchor="w", text_color=MUTED)
        self.warning_label = ctk.CTkLabel(info, text="", anchor="w", text_color=WARNING, justify="left",
                                          wraplength=1060)
        self.download_label = ctk.CTkLabel(info, text="", anchor="w", text_color="#7fb4e6", justify="left",
                                           wraplength=1060)
        for row, label in enumerate((self.plan_label, self.warning_label, self.download_label)):
            label.grid(row=row, column=0, sticky="w")
        Tooltip(self.plan_label, lambda: "\n".join((self.summary or {}).get("notes") or []))
        bar = ctk.CTkFrame(self, fg_color="transparent")
        bar.grid(row=3, column=0, sticky="ew", padx=14, pady=(6, 0))
        bar.grid_columnconfigure(3, weight=1)
        self.preview_button = ctk.CTkButton(bar, text="Preview", width=110, command=self.preview)
        self.caption_button = ctk.CTkButton(bar, text="Caption all", width=120, height=34,
                                            font=ctk.CTkFont(size=14, weight="bold"), command=self.caption_all)
        self.preview_colour = self.preview_button.cget("fg_color")
        self.preview_button.grid(row=0, column=0, padx=(0, 8))
        self.caption_button.grid(row=0, column=1, padx=(0, 12))
        Tooltip(self.preview_button, lambda: self._tip(f"Propose captions for the first {PREVIEW_COUNT} images a "
                                                      "run would change, with these settings; nothing is written."))
        Tooltip(self.caption_button, lambda: self._tip("Write the captions as set here (Stop keeps what is written; "
                                                      "Resume goes on from there)."))
        self.status_line = Line(bar, text_color=MUTED, width=STATUS_WIDTH)  # the run's status, cut to its width
        self.status_line.fit(STATUS_WIDTH)
        self.status_line.label.grid(row=0, column=2, sticky="w", padx=(0, 10))
        self.progress = ctk.CTkProgressBar(bar, height=10)
        self.progress.grid(row=0, column=3, sticky="ew")
        self.progress.set(0)
        self.count_label = ctk.CTkLabel(bar, text="", width=70)
        self.count_label.grid(row=0, column=4, padx=(8, 0))
        self.problem_line, self.message_line = Line(bar, tip=False, text_color=WARNING), MessageLine(bar)
        for row, label in enumerate((self.problem_line.label, self.message_line.label)):
            label.grid(row=row + 1, column=0, columnspan=5, sticky="ew")
        self.strip = ctk.CTkFrame(self, fg_color=GROUP_COLOUR)
        self.strip.grid(row=4, column=0, sticky="ew", padx=10, pady=(4, 10))
        self.strip_title = ctk.CTkLabel(self.strip, text="Preview", font=ctk.CTkFont(size=14, weight="bold"))
        self.strip_title.grid(row=0, column=0, columnspan=CARDS, sticky="w", padx=12, pady=(8, 2))
        self.card_widgets = []
        self._blank = RootImage(self, Image.new("RGB", (THUMB, THUMB), "#333333"), (THUMB, THUMB))
        for k in range(CARDS):
            self.strip.grid_columnconfigure(k, weight=1, uniform="cards")
            image = ctk.CTkLabel(self.strip, text="", width=THUMB, height=THUMB, cursor="hand2")
            image.bind("<Button-1>", lambda _e, k=k: self.open_card(k))
            text = ctk.CTkLabel(self.strip, text="", wraplength=240, justify="center", font=ctk.CTkFont(size=11),
                                height=42)
            image.grid(row=1, column=k, padx=6, pady=(2, 0))
            text.grid(row=2, column=k, padx=6, pady=(2, 8), sticky="n")
            self.card_widgets.append((image, text))
        self.render_cards()

    def _tip(self, text: str) -> str:
        if self.runner.running:
            return "Stop after the current batch; what is written so far stays."
        return "Fix these first:\n" + "\n".join(f"• {r}" for r in self.reasons) if self.reasons else text

    def _sync_concept(self) -> None:
        """The image folder and subfolders follow the concept (not while a run uses them); the heading says so."""
        c = self.concept
        if not self.runner.running:
            self.spec.image_dir, self.spec.include_subfolders = c.path, c.include_subdirectories
            self.spec.mask_suffix = c.mask_suffix if c.masks == "file" else CaptionSpec.mask_suffix
        text = (f"Images of “{c.name}”: {c.path or '(no folder yet)'}, "
                f"{'with' if c.include_subdirectories else 'without'} its subfolders (set in the concepts tab).")
        if c.caption_source not in TXT_SOURCES:
            text += (f"\nThis concept takes its captions from “{c.caption_source}”: the .txt files written here are "
                     "used when its caption source is txt.")
        if c.masks == "file":
            text += f"\nIts mask files (NAME{c.mask_suffix}.png) are not captioned."
        reconfigure(self.heading, text=text, text_color=WARNING if "\n" in text else ("gray90", "gray90"))

    def concept_edited(self) -> None:
        """The concepts tab changed a concept (perhaps this one's folder): check again."""
        self._sync_concept()
        self.schedule_validation()
        self.schedule_plan()

    # ---- editing and checking -----------------------------------------------------------------------------

    def _edited(self, path: str) -> None:
        self.message_line.edited()
        if path == "mode":
            self._follow_trigger()
        self.schedule_validation()
        self.schedule_plan()

    def _follow_trigger(self) -> None:
        """New captions start with the trigger word, the word the preset trains (training › Placeholder; a
        concept has no trigger word of its own), in modes missing and all; prepend and append extend captions
        that hold it already. A prefix the user typed stays."""
        wanted = self.trigger if self.spec.mode in ("missing", "all") else ""
        if self.spec.prefix in ("", self._filled_prefix) and self.spec.prefix != wanted:
            self.spec.prefix = wanted
            self.form.refresh("prefix")
        self._filled_prefix = wanted
        filled = self.spec.prefix == self.trigger and self.trigger
        reconfigure(self.trigger_note, text=f"Prefix “{self.trigger}”: the word this preset trains (training › "
                                            "Placeholder)" if filled else "")

    def spec_problems(self, spec, check_paths: bool = True) -> list[str]:
        return validate_spec(spec) + (model_problems(spec) if check_paths else [])

    def schedule_validation(self) -> None:
        if self._validate_id is None and self.winfo_exists():
            self._validate_id = self.after_idle(self.validate_now)

    def validate_now(self) -> list[str]:
        """Mark the problems on their fields; the buttons are off with the reasons (a bad value or model folder,
        the device held by a training or another tool); the hints follow the spec. A valid spec is remembered."""
        if self._validate_id is not None:
            self.after_cancel(self._validate_id)
            self._validate_id = None
        problems = self.form.problems()
        self.form.mark(problems)
        if not self.form.problems(check_paths=False):
            self.last_spec.write(self.spec, {})
        busy = self.window.device_busy(asking=self.runner)
        self.reasons = [f"{busy}; wait for it or stop it"] * bool(busy) + [describe_problem(p, self.spec)
                                                                           for p in problems]
        for name, applies in APPLIES.items():  # a field that does not apply to the choices made is hidden
            if self._shown.get(name) != applies(self.spec):
                self._shown[name] = applies(self.spec)
                self.form.bindings_for(name)[0].labelled.set_visible(self._shown[name])
        self._show_line(self.download_label, download_note(self.spec))
        self.show_running()
        return self.reasons

    def jobs_changed(self) -> None:
        self.schedule_validation()

    # ---- what a run would write (counted in a worker thread) ------------------------------------------------

    def schedule_plan(self) -> None:
        if self._plan_after is not None:
            self.after_cancel(self._plan_after)
        self._plan_after = self.after(PLAN_DEBOUNCE_MS, self.request_plan)

    def request_plan(self) -> None:
        """Count now (in a worker thread) what a run of the spec as shown would write; show_plan shows it."""
        if self._plan_after is not None:  # called directly: the scheduled count is this one
            self.after_cancel(self._plan_after)
            self._plan_after = None
        if self.runner.running and not self.previewing:  # the files change as it runs: counted again at its end
            reconfigure(self.plan_label, text="")
            return self._show_line(self.warning_label, "")
        self._plan_token += 1
        args = (copy.deepcopy(self.spec), self._plan_token, self._plans)  # plain data: no Tk object in the thread
        threading.Thread(target=lambda spec, token, out: out.put((token, plan_summary(spec))), args=args,
                         daemon=True, name="caption-plan").start()
        if self._poll_after is None:
            self._poll_after = self.after(POLL_MS, self._poll_plans)

    def _poll_plans(self) -> None:
        self._poll_after = None
        while not self._plans.empty():
            token, summary = self._plans.get_nowait()
            if token == self._plan_token:
                self.show_plan(summary)
        if not self.plan_settled():
            self._poll_after = self.after(POLL_MS, self._poll_plans)

    def plan_settled(self) -> bool:
        """The counts shown are for the spec as it is (nothing scheduled or on its way)."""
        return self._plan_after is None and self.summary is not None and self.summary["token"] == self._plan_token

    def show_plan(self, summary: dict) -> None:
        self.summary = dict(summary, token=self._plan_token)
        text, warning = plan_text(summary, self.spec.mode)
        reconfigure(self.plan_label, text=text)
        self._show_line(self.warning_label, warning)
        self.show_running()  # nothing to caption: the buttons are off

    @staticmethod
    def _show_line(label, text: str) -> None:
        """A line of the notes under the form: shown with text, else taking no room."""
        reconfigure(label, text=text)
        label.grid() if text else label.grid_remove()

    # ---- running ------------------------------------------------------------------------------------------

    def _make_session(self, spec):
        from trainer.session import caption_session  # cheap: the engine loads in the session
        return caption_session(spec, process=SESSION_IN_CHILD, preview_count=PREVIEW_COUNT if self.previewing else 0)

    def preview(self) -> bool:
        """Preview, or stop the preview that runs."""
        return self.stop() if self.runner.running else self.start(preview=True)

    def caption_all(self) -> bool:
        """Caption all (resume), or stop the run that goes on."""
        return self.stop() if self.runner.running else self.start(preview=False)

    def start(self, preview: bool) -> bool:
        """Run as shown; False, with the reason shown, when it cannot (the engine's own checks come first)."""
        if self.runner.running or self.validate_now():
            return False
        from trainer.tools.captioning import check_inputs
        try:
            check_inputs(self.spec)
        except InputError as e:
            self.message_line.show(f"Not started: {describe_problem(str(e), self.spec)}", "error")
            return False
        if not preview and self.spec.mode == "all":
            replaced = plan_summary(self.spec).get("with_caption", 0)
            if replaced and not self.window.dialogs.confirm(
                    "Replace captions?", f"Mode all replaces {replaced} existing caption(s) in "
                    f"{self.spec.image_dir} with the model's. Replace them?"):
                return False
        if not self.plan_settled():  # the counts shown are for the spec as it starts
            self.request_plan()
        self.previewing, self.cards = preview, []
        self.message_line.show("")
        self.progress.set(0)
        self.count_label.configure(text="")
        self.strip_title.configure(text="Preview: nothing is written" if preview else "Newest captions written")
        self.render_cards()
        if not self.runner.started(self.spec, self.message_line.show):
            return False
        self.status_line.set("Starting…")
        self.window.jobs_changed()
        self.show_running()
        return True

    def stop(self) -> bool:
        if not self.runner.running:
            return False
        self.runner.stop()
        self.status_line.set("Stopping after the current batch…")
        self.show_running()
        return True

    def show_running(self) -> None:
        """Each button: its action, Stop while its run goes (the other is off), off with reasons."""
        running, ok = self.runner.running, not self.reasons
        for button, mine, text, colour in ((self.preview_button, self.previewing, "Preview", self.preview_colour),
                                           (self.caption_button, not self.previewing,
                                            "Resume" if self.resumable else "Caption all", START_COLOUR[0])):
            if running and mine:
                stopping = self.runner.stopping
                reconfigure(button, text="Stopping…" if stopping else "Stop", fg_color=STOP_COLOUR[0],
                            state="disabled" if stopping else "normal")
            else:
                idle = self.plan_settled() and self.summary.get("todo") == 0  # nothing a run would write
                enabled = ok and not running and not idle
                reconfigure(button, text=text, fg_color=colour if enabled else DISABLED,
                            state="normal" if enabled else "disabled")
        self.problem_line.text, self.problem_line.tail = problem_text([] if running else self.reasons,
                                                                      "Can't start", "the buttons")
        self.problem_line.fit(self.winfo_width() - 40 if self.winfo_width() > 1 else UNCUT)

    def _handle(self, event) -> None:
        if isinstance(event, ev.Status):
            self.status_line.set(event.text)
        elif isinstance(event, ev.Log) and event.level != "error":  # a failure's message comes with RunFinished
            self.status_line.set((event.text.splitlines() or [""])[0])
        elif isinstance(event, ev.ImageGenerated):
            self.progress.set(event.done / event.total if event.total else 0)
            self.count_label.configure(text=f"{event.done} / {event.total}")
            card = (event.path, event.caption, event.skipped)
            self.cards = (self.cards + [card])[:CARDS] if self.previewing else ([card] + self.cards)[:CARDS]
            self.render_cards()
        elif isinstance(event, ev.RunFinished):
            self._finished(event)

    def _finished(self, event: ev.RunFinished) -> None:
        head, level = {"completed": ("Done", "success"), "stopped": ("Stopped", "info")}.get(event.outcome,
                                                                                           ("Failed", "error"))
        message = describe_problem(event.message, self.spec) if event.bad_input else event.message
        self.message_line.show(f"{head}: {message or 'no reason given'}", level)
        self.status_line.set("")
        if not self.previewing:
            self.resumable = event.outcome == "stopped"
            if self.on_changed is not None:
                self.on_changed()  # the concept's captions changed: its tab rescans
        if self._close_pending:
            return self.close_now()
        self.request_plan()
        self.show_running()

    def render_cards(self) -> None:
        """The strip: a thumbnail (click: full size) and the caption of each image shown."""
        for k, (image_label, text_label) in enumerate(self.card_widgets):
            path, caption, skipped = self.cards[k] if k < len(self.cards) else ("", "", False)
            if path and path not in self._thumbs:
                self._thumbs[path] = load_thumbnail(path, THUMB, self)
            image = self._thumbs.get(path)  # a blank one, never None: CTkLabel would keep the old (freed) image
            image_label.configure(image=image or self._blank, text="" if image or not path else "(unreadable)")
            text = "(left without a caption: see the status)" if skipped else caption
            text_label.configure(text=text if len(text) <= 160 else text[:157] + "…",
                                 text_color=WARNING if skipped else ("gray85", "gray85"))
        shown = {path for path, _, _ in self.cards}
        for path in [p for p in self._thumbs if p not in shown]:
            bury(self._thumbs.pop(path))
        if not self.cards:
            self.card_widgets[0][1].configure(text="Preview shows what the model writes for the first few "
                                                   "images, before anything is written.", text_color=MUTED)

    def open_card(self, k: int):
        """Image k of the strip full size in the image viewer, its caption below; the viewer, or None."""
        if k >= len(self.cards):
            return None
        path, caption, _ = self.cards[k]
        return show_image_window(self, path, Path(path).name, f"{caption}\n{path}")

    # ---- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close; while a run goes, ask first, stop it, and close when it has stopped."""
        if self.runner.running:
            if self._close_pending or not self.window.dialogs.confirm(
                    "Stop captioning?", "Captioning is running. Stop it (what is written stays) and close?"):
                return
            self._close_pending = True
            self.stop()
            return
        self.close_now()

    def close_now(self) -> None:
        """Close at once (the window closes): the runner leaves the window's list unless its run still goes."""
        for after_id in (self._plan_after, self._poll_after, self._validate_id):
            if after_id is not None:
                self.after_cancel(after_id)
        window, runner = self.window, self.runner
        if not runner.running and not window.closed:  # after the drain that called us has finished its loop
            window.after(0, lambda: runner in window.tool_runners and window.tool_runners.remove(runner))
        self.destroy()
        bury((self, self._blank, list(self._thumbs.values())))
