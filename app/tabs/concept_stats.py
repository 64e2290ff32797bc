"""The concepts tab's statistics panel: the engine's concept statistics, computed in a worker thread: images
usable and skipped, images without a caption and what the concept does with them, captions over the token limit,
caption files that cannot be read, and the aspect buckets."""
from __future__ import annotations

import copy
import json
import queue
import threading
import tkinter as tk
from pathlib import Path

import customtkinter as ctk

from app.widgets import ERROR, GROUP_COLOUR, MUTED, WARNING, Group, Tooltip
from trainer.config import Preset, built_by_demo
from trainer.errors import plain_text
from trainer.session import concept_statistics

SKIPPED_LISTED = 200  # skipped files written into the scrollable list; the rest become "+N more"
SKIPPED_VISIBLE = 6   # lines the list shows before it scrolls
EXAMPLES = 3  # files named in a one-line finding (images without a caption, long captions)
PROBLEMS_VISIBLE = 4  # lines the unreadable-captions list shows before it scrolls
POLL_MS = 50
CACHED = 32  # statistics kept for switching back to a concept (shown at once while it is rechecked)
BAR, BAR_TEXT = "#3b8ed0", "#d0d0d0"
ROLE_NOTES = {"regularization": "regularization images, mixed into every epoch",
              "validation": "validation images, never trained on"}  # the summary's note on a concept's role


def stats_key(preset: Preset, index: int) -> str:
    """What the statistics of concept `index` depend on; an edit that leaves this unchanged needs no rescan."""
    c, t = preset.concepts[index], preset.training
    return json.dumps([c.path, c.include_subdirectories, c.caption_source, c.caption, c.missing_caption,
                       c.resolution, t.resolution, t.aspect_bucketing, t.max_token_length, preset.general.cache_dir,
                       preset.model.base_model, c.role, c.masks, c.mask_suffix])


def one_concept_preset(preset: Preset, index: int) -> Preset:
    """A private copy of the preset holding only concept `index` (made on the Tk thread, read by the worker)."""
    mine = copy.deepcopy(preset)
    mine.concepts = [mine.concepts[index]]
    return mine


def _compute(preset: Preset, token: int, results: queue.Queue) -> None:
    """Worker thread: plain data in, plain data out. It references no Tk object (nor anything holding one)."""
    try:
        stats = concept_statistics(preset)[0]
    except Exception as e:  # noqa: BLE001 - shown in the panel rather than lost in a thread
        concept = preset.concepts[0]
        stats = {"name": concept.name, "path": concept.path, "enabled": concept.enabled,
                 "error": f"statistics failed: {plain_text(str(e)) or type(e).__name__}", "image_count": 0,
                 "usable": 0, "skipped": [], "without_caption": 0, "caption_words": None, "caption_chars": None,
                 "resolutions": [], "buckets": []}
    results.put((token, stats))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def span(values: list[int] | None, unit: str) -> str:
    lo, hi = values
    return f"{lo} {unit}" if lo == hi else f"{lo}–{hi} {unit}"


def skipped_entries(stats: dict) -> list[tuple[str, str]]:
    """(path, reason) pairs; the engine gives dicts, older shapes gave [path, reason] pairs. An image skipped
    because its caption file cannot be read is left out: the caption problems name that file and why."""
    unreadable = {str(Path(k["path"])) for k in stats.get("caption_problems") or []}
    pairs = [(k["path"], k["reason"]) if isinstance(k, dict) else (k[0], k[1]) for k in stats["skipped"]]
    return [(p, r) for p, r in pairs if str(Path(p).with_suffix(".txt")) not in unreadable]


def named(paths: list[str], total: int, folder: str) -> str:
    """'a.png, b.png, c.png and 4 more' (at most EXAMPLES names; `total` counts all of them)."""
    shown = [short_path(p, folder) for p in paths[:EXAMPLES]]
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


MISSING_ACTIONS = {  # missing_caption -> what the images without a caption do (one image, several)
    "filename": ("trains on its file name", "train on their file names"),
    "skip": ("is skipped (not trained on)", "are skipped (not trained on)"),
    "refuse": ("stops the run before training: write its caption, or choose another “Without a caption”",
               "stop the run before training: write their captions, or choose another “Without a caption”"),
}


def missing_text(stats: dict, concept) -> str:
    """The images without a usable caption (no .txt or an empty one), a few by name, and what the concept's
    missing_caption does with them; "" when every image has one."""
    n = stats.get("without_caption") or 0
    if not n:
        return ""
    action = stats.get("missing_caption") or concept.missing_caption
    one = n == 1
    if action in MISSING_ACTIONS:
        doing = MISSING_ACTIONS[action][0 if one else 1]
    elif concept.caption.strip():
        doing = f"{'trains' if one else 'train'} on the concept caption “{concept.caption.strip()}”"
    else:
        doing = (f"{'trains' if one else 'train'} on an empty caption (set the concept's Caption, or choose "
                 "another “Without a caption”)")
    examples = named(stats.get("without_caption_examples") or [], n, stats["path"])
    return (f"{plural(n, 'image')} without a caption (no .txt, or an empty one)"
            + (f": {examples}" if examples else "") + f". {'It' if one else 'They'} {doing}.")


def long_text(stats: dict) -> str:
    """The captions over the token limit, the first few files with their token counts; "" when none."""
    found = stats.get("long_captions") or {}
    count, limit = found.get("count") or 0, found.get("limit")
    if not count:
        return ""
    shown = ", ".join(f"{short_path(k['path'], stats['path'])} ({k['tokens']} tokens)"
                      for k in (found.get("examples") or [])[:EXAMPLES])
    text = (f"{plural(count, 'caption')} longer than {limit} tokens, cut at the limit"
            + (f": {shown}" if shown else "") + ".")
    if limit is not None and limit < 225:
        text += " Max tokens (training tab) takes 150 or 225."
    return text


def mask_text(stats: dict) -> str:
    """Masked training (the concept's masks on): how many images have a mask and which have none (they train
    unmasked); "" when the concept uses no masks."""
    masks = stats.get("masks")
    if not masks:
        return ""
    text = f"Masks from {masks['source']}: {plural(masks['with'], 'image')} with a mask"
    if masks["without"]:
        examples = named(masks.get("without_examples") or [], masks["without"], stats["path"])
        text += f", {masks['without']} without (trained unmasked): {examples}"
    return text + "."


def guessed_text(stats: dict) -> str:
    """The captions read in a detected legacy code page (a guess that can be wrong), a few by name; "" if none."""
    found = stats.get("guessed_encodings") or []
    if not found:
        return ""
    shown = ", ".join(f"{short_path(k['path'], stats['path'])} ({k['encoding']})" for k in found[:EXAMPLES])
    more = f" and {len(found) - EXAMPLES} more" if len(found) > EXAMPLES else ""
    return (f"{plural(len(found), 'caption file')} in a legacy code page, read as detected: {shown}{more}. "
            "If one reads wrong in the caption editor, save it as UTF-8.")


def short_path(path: str, folder: str) -> str:
    try:
        return str(Path(path).relative_to(Path(folder).expanduser()))
    except ValueError:
        return path


class BucketChart(tk.Canvas):
    """Horizontal bars, one per aspect bucket ('512×512 ▇▇▇ 12'), grouped by resolution if there are several."""

    ROW, LABEL_W, COUNT_W = 20, 78, 44

    def __init__(self, master, **kw):
        bg = GROUP_COLOUR[1] if ctk.get_appearance_mode() == "Dark" else GROUP_COLOUR[0]
        super().__init__(master, bg=bg, highlightthickness=0, height=self.ROW, **kw)
        self.rows: list[tuple[str, str, int]] = []  # (kind "heading" | "bar", text, count)
        self.bind("<Configure>", lambda _e: self.redraw())

    def set_buckets(self, buckets: list[dict]) -> None:
        resolutions = sorted({b["resolution"] for b in buckets})
        self.rows = []
        for r in resolutions:
            if len(resolutions) > 1:
                self.rows.append(("heading", f"at {r} px", 0))
            ordered = sorted((b for b in buckets if b["resolution"] == r), key=lambda b: b["width"] / b["height"])
            self.rows += [("bar", f"{b['width']}×{b['height']}", b["images"]) for b in ordered]
        self.configure(height=max(1, len(self.rows)) * self.ROW + 4)
        self.redraw()

    def bar_rows(self) -> list[tuple[str, int]]:
        return [(text, count) for kind, text, count in self.rows if kind == "bar"]

    def redraw(self) -> None:
        self.delete("all")
        width = max(self.winfo_width(), 200)
        most = max((count for kind, _, count in self.rows if kind == "bar"), default=1) or 1
        room = width - self.LABEL_W - self.COUNT_W - 12
        font = ("TkDefaultFont", 10)
        for i, (kind, text, count) in enumerate(self.rows):
            y = i * self.ROW + self.ROW / 2 + 2
            if kind == "heading":
                self.create_text(4, y, text=text, anchor="w", fill=MUTED, font=font, tags=("heading",))
                continue
            self.create_text(self.LABEL_W, y, text=text, anchor="e", fill=BAR_TEXT, font=font, tags=("label",))
            x0 = self.LABEL_W + 8
            x1 = x0 + max(2, room * count / most)
            self.create_rectangle(x0, y - 6, x1, y + 6, fill=BAR, outline="", tags=("bar",))
            self.create_text(x1 + 6, y, text=str(count), anchor="w", fill=BAR_TEXT, font=font, tags=("count",))


class StatsPanel(Group):
    """Images usable / found, skipped files with reasons, missing captions, caption lengths, bucket histogram.

    `request()` starts a worker thread on a private copy of the preset; results come back through a queue that
    after() drains on the Tk thread. Each request gets a token and only the latest token's result is shown.
    """

    def __init__(self, master, on_rescan):
        super().__init__(master, "Statistics")
        head = ctk.CTkFrame(self, fg_color="transparent")
        head.grid(row=0, column=1, sticky="e", padx=8, pady=(8, 2))
        self.status = ctk.CTkLabel(head, text="", text_color=MUTED)
        self.status.grid(row=0, column=0, padx=(0, 8))
        self.rescan_button = ctk.CTkButton(head, text="Rescan", width=70, height=24, command=on_rescan)
        self.rescan_button.grid(row=0, column=1)
        Tooltip(self.rescan_button, "Check the folder again (after adding, removing or editing files).")
        body = ctk.CTkFrame(self, fg_color="transparent")
        body.grid(row=1, column=0, columnspan=2, sticky="ew", padx=12, pady=(0, 10))
        body.grid_columnconfigure(0, weight=3, uniform="stats")
        body.grid_columnconfigure(1, weight=2, uniform="stats")
        self.facts = facts = ctk.CTkFrame(body, fg_color="transparent")
        facts.grid(row=0, column=0, sticky="new", padx=(0, 12))
        facts.grid_columnconfigure(0, weight=1)
        self.summary = ctk.CTkLabel(facts, text="", anchor="w", justify="left", wraplength=520,
                                    font=ctk.CTkFont(size=13, weight="bold"))
        self.summary.grid(row=0, column=0, sticky="w")
        self.error = ctk.CTkLabel(facts, text="", anchor="w", justify="left", wraplength=520, text_color=ERROR)
        self.captions = ctk.CTkLabel(facts, text="", anchor="w", justify="left", wraplength=520, text_color=MUTED)
        self.missing = ctk.CTkLabel(facts, text="", anchor="w", justify="left", wraplength=520, text_color=WARNING)
        self.long = ctk.CTkLabel(facts, text="", anchor="w", justify="left", wraplength=520, text_color=WARNING)
        self.problems_title = ctk.CTkLabel(facts, text="", anchor="w", text_color=WARNING)
        self.problems_box = ctk.CTkTextbox(facts, height=60, wrap="word", activate_scrollbars=True,
                                           font=ctk.CTkFont(family="DejaVu Sans Mono", size=11))
        self.wrapped = (self.summary, self.error, self.captions, self.missing, self.long)
        facts.bind("<Configure>", self._rewrap, add="+")
        self.skipped_title = ctk.CTkLabel(facts, text="", anchor="w", text_color=WARNING)
        self.skipped_box = ctk.CTkTextbox(facts, height=60, wrap="none", activate_scrollbars=True,
                                          font=ctk.CTkFont(family="DejaVu Sans Mono", size=11))
        self.buckets = buckets = ctk.CTkFrame(body, fg_color="transparent")
        buckets.grid_columnconfigure(0, weight=1)
        self.buckets_title = ctk.CTkLabel(buckets, text="Aspect buckets", anchor="w", text_color=MUTED)
        self.buckets_title.grid(row=0, column=0, sticky="w")
        self.chart = BucketChart(buckets)
        self.chart.grid(row=1, column=0, sticky="ew")
        Tooltip(self.buckets_title, "Images per training size: each image trains at the bucket nearest its own "
                                    "aspect ratio (one bucket per resolution when the concept trains at several).")
        self.shown: dict | None = None
        self._results: queue.Queue = queue.Queue()
        self._token = 0
        self._outstanding = 0
        self._poll_id: str | None = None
        self._requests: dict[int, tuple[str, object, bool]] = {}  # token -> (key, concept copy, demo)
        self._cache: dict[str, dict] = {}
        self.key: str | None = None
        self.folder_existed: bool | None = None  # at the latest request: a folder appearing later is rescanned

    def _rewrap(self, event) -> None:
        """Lines wrap at the width the facts column has (narrower beside the bucket chart)."""
        width = max(300, int(event.width / ctk.ScalingTracker.get_widget_scaling(self)) - 8)
        for label in self.wrapped:
            if label.cget("wraplength") != width:
                label.configure(wraplength=width)

    def destroy(self) -> None:
        if self._poll_id is not None:
            self.after_cancel(self._poll_id)
            self._poll_id = None
        super().destroy()

    # ---- threads ----------------------------------------------------------------------------------

    def request(self, preset: Preset, index: int) -> None:
        """(Re)compute the statistics of concept `index` in a worker; show cached ones meanwhile."""
        self._token += 1
        self.key = stats_key(preset, index)
        mine = one_concept_preset(preset, index)
        concept = mine.concepts[0]
        demo = built_by_demo(preset, concept.path)  # the demo's own images folder, built at Start
        self.folder_existed = bool(concept.path) and Path(concept.path).expanduser().is_dir()
        self._requests = {self._token: (self.key, concept, demo)}
        cached = self._cache.get(self.key)
        if cached is not None:
            self.show(cached, concept, demo)
            self.status.configure(text="rechecking…")
        else:
            self.clear("Checking the images…")
            self.status.configure(text="checking…")
        threading.Thread(target=_compute, args=(mine, self._token, self._results), daemon=True,
                         name="concept-stats").start()
        self._outstanding += 1
        if self._poll_id is None:
            self._poll_id = self.after(POLL_MS, self._poll)

    def forget(self) -> None:
        """No concept selected: results still on their way are dropped."""
        self._token += 1
        self._requests, self.key, self.folder_existed = {}, None, None
        self.status.configure(text="")

    def _poll(self) -> None:
        self._poll_id = None
        while True:
            try:
                token, stats = self._results.get_nowait()
            except queue.Empty:
                break
            self._outstanding -= 1
            if token in self._requests:  # the latest request; older ones are stale
                key, concept, demo = self._requests.pop(token)
                self._cache.pop(key, None)
                self._cache[key] = stats
                while len(self._cache) > CACHED:
                    self._cache.pop(next(iter(self._cache)))
                self.show(stats, concept, demo)
                self.status.configure(text="")
        if self._outstanding > 0:
            self._poll_id = self.after(POLL_MS, self._poll)

    def pending(self) -> bool:
        return bool(self._requests)

    # ---- drawing ----------------------------------------------------------------------------------

    def clear(self, text: str = "", colour: str | None = None) -> None:
        self.summary.configure(text=text, text_color=colour or MUTED)
        for widget in (self.error, self.captions, self.missing, self.long, self.problems_title, self.problems_box,
                       self.skipped_title, self.skipped_box, self.buckets):
            widget.grid_remove()  # a whole frame goes: Tk keeps an emptied grid master at its old size
        self.facts.grid(columnspan=2)
        self.chart.set_buckets([])
        self.shown = None

    def show(self, stats: dict, concept, demo: bool) -> None:
        """Draw `stats` (one entry of trainer.data.stats.concept_stats) of `concept`; `demo`: its folder is the
        demo's, built at Start (so a missing one is no mistake)."""
        folder_missing = bool(stats["path"]) and not Path(stats["path"]).expanduser().is_dir()
        if stats["error"] and not stats["image_count"]:
            if demo and folder_missing:
                self.clear(f"{stats['path']} does not exist yet: the demo builds it there when training starts.")
            elif not stats["path"]:
                self.clear("No folder chosen: pick the folder of this concept's images above.", ERROR)
            else:
                self.clear(stats["error"][:1].upper() + stats["error"][1:] + ".", ERROR)
            self.shown = stats
            return
        self.clear()
        self.shown = stats
        self.summary.configure(text=self.summary_text(stats),
                               text_color=WARNING if not stats["usable"] else ("gray10", "gray90"))
        if stats["error"]:
            self.error.configure(text=stats["error"][:1].upper() + stats["error"][1:] + ".")
            self.error.grid(row=1, column=0, sticky="w")
        captions = self.captions_text(stats, concept)
        if captions:
            self.captions.configure(text=captions)
            self.captions.grid(row=2, column=0, sticky="w", pady=(2, 0))
        missing = missing_text(stats, concept)
        if missing:
            action = stats.get("missing_caption") or concept.missing_caption
            self.missing.configure(text=missing, text_color=ERROR if action == "refuse" else WARNING)
            self.missing.grid(row=3, column=0, sticky="w", pady=(4, 0))
        long = "\n".join(text for text in (long_text(stats), guessed_text(stats)) if text)
        if long:
            self.long.configure(text=long)
            self.long.grid(row=4, column=0, sticky="w", pady=(4, 0))
        self.show_problems(stats)
        self.show_skipped(stats)
        if stats["buckets"]:
            self.facts.grid(columnspan=1)
            self.buckets.grid(row=0, column=1, sticky="new")
            self.chart.set_buckets(stats["buckets"])

    @staticmethod
    def summary_text(stats: dict) -> str:
        if not stats["image_count"]:
            return f"No image files in {stats['path']}."
        parts = [f"{stats['usable']} of {plural(stats['image_count'], 'image')} usable"]
        if stats["skipped"]:
            parts.append(f"{len(stats['skipped'])} skipped")
        if stats["without_caption"]:
            parts.append(f"{stats['without_caption']} without a caption")
        role = ROLE_NOTES.get(stats.get("role", "train"))
        if role:
            parts.append(role)
        return " · ".join(parts)  # unreadable and long captions have lines of their own below

    @staticmethod
    def captions_text(stats: dict, concept) -> str:
        lines = []
        if stats["caption_words"]:
            lines.append(f"Captions: {span(stats['caption_words'], 'words')}, "
                         f"{span(stats['caption_chars'], 'characters')}")
        if (not stats["without_caption"] and not stats.get("caption_problems") and stats["usable"]
                and concept.caption_source in ("txt", "txt_or_filename")):
            lines.append("Every image has a caption file.")
        masks = mask_text(stats)
        if masks:
            lines.append(masks)
        return "\n".join(lines)

    def show_problems(self, stats: dict) -> None:
        """The caption files that cannot be decoded (their images are skipped), each with the reason."""
        problems = stats.get("caption_problems") or []
        if not problems:
            return
        one = len(problems) == 1
        self.problems_title.configure(text=f"{plural(len(problems), 'caption file')} cannot be read "
                                           f"({'its image is' if one else 'their images are'} skipped):")
        self.problems_title.grid(row=5, column=0, sticky="w", pady=(6, 0))
        lines = [f"{short_path(k['path'], stats['path'])} — {k['reason']}" for k in problems[:SKIPPED_LISTED]]
        if len(problems) > SKIPPED_LISTED:
            lines.append(f"+{len(problems) - SKIPPED_LISTED} more")
        rows = sum(1 + len(line) // 90 for line in lines)  # wrapped at about 90 characters
        box = self.problems_box
        box.configure(state="normal", height=min(rows, PROBLEMS_VISIBLE) * 17 + 12)
        box.delete("1.0", "end")
        box.insert("1.0", "\n".join(lines))
        box.configure(state="disabled")
        box.grid(row=6, column=0, sticky="ew", pady=(2, 0))

    def show_skipped(self, stats: dict) -> None:
        entries = skipped_entries(stats)
        if not entries:
            return
        also = "Also skipped" if len(entries) < len(stats["skipped"]) else "Skipped"  # the rest: captions above
        self.skipped_title.configure(text=f"{also} {plural(len(entries), 'file')} (not used in training):")
        self.skipped_title.grid(row=7, column=0, sticky="w", pady=(6, 0))
        lines = [f"{short_path(p, stats['path'])} — {reason}" for p, reason in entries[:SKIPPED_LISTED]]
        if len(entries) > SKIPPED_LISTED:
            lines.append(f"+{len(entries) - SKIPPED_LISTED} more")
        box = self.skipped_box
        box.configure(state="normal", height=min(len(lines), SKIPPED_VISIBLE) * 17 + 12)
        box.delete("1.0", "end")
        box.insert("1.0", "\n".join(lines))
        box.configure(state="disabled")
        box.grid(row=8, column=0, sticky="ew", pady=(2, 0))
