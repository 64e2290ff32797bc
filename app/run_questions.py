"""The questions Start asks before a training: continue or start over where an earlier run left its files, and
whether to resume on data that changed since the backup. Each returns the session options the user chose."""
from __future__ import annotations

from pathlib import Path

from app.form import split_problem
from trainer.errors import plain_text
from trainer.train.runs import EARLIER_DIR, EarlierRun, earlier_run

START_OVER = "Start over"
RESUME_CHANGED = "Resume with the changed data"
EARLIER_TITLE = "An earlier run is in this workspace"
CHANGED_TITLE = "The training data changed"


def continue_label(earlier: EarlierRun) -> str:
    """The Continue button's text: 'Continue from step 503 (epoch 4)'."""
    epoch = f" (epoch {earlier.backup_epoch})" if earlier.backup_epoch is not None else ""
    return f"Continue from step {earlier.backup_step}{epoch}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def sentence(message: str) -> str:
    """An engine message as a sentence for a dialog: no 'dotted.path: ' in front (the window's bottom bar and log
    keep it), no escape codes, a capital first letter and a full stop."""
    _, reason = split_problem(plain_text(message).strip())
    reason = reason.rstrip(".")
    return reason[:1].upper() + reason[1:] + "." if reason else ""


def earlier_run_message(earlier: EarlierRun | None, workspace: Path, refusal: str = "",
                        allow_continue: bool = True) -> str:
    """What the question says: what the earlier run left, what Continue (when offered) and Start over do with
    it. `refusal` is the engine's message when the run itself refused to start (e.g. another run's model at the
    output path)."""
    said = split_problem(refusal)[0] == "general.workspace_dir" and earlier is not None  # said again below
    parts = [sentence(refusal)] if refusal and not said else []
    if earlier is not None and earlier.in_workspace:
        parts.append(f"{workspace} holds an earlier run: {earlier.summary()}.")
    elif earlier is not None and not refusal:
        parts.append(f"The output path holds the model of an earlier run: {earlier.model}.")
    if earlier is not None and earlier.backup is not None and allow_continue:
        parts.append(f"Continue resumes that run from its latest backup, at step {earlier.backup_step}.")
    model = earlier.model if earlier is not None else None
    archive = f"{workspace / EARLIER_DIR}/<date-time>/"
    if model is None or _inside(model, workspace):
        parts.append(f"Start over trains from step 0 and deletes nothing: the earlier run's samples, backups, "
                     f"saves and model move to\n{archive}")
    else:
        parts.append(f"Start over trains from step 0 and deletes nothing: the earlier run's samples, backups and "
                     f"saves move to\n{archive}\nand its model is renamed beside itself to "
                     f"{model.stem}.earlier-<date-time>{model.suffix}")
    return "\n\n".join(parts)


def ask_about_earlier_run(dialogs, preset, refusal: str = "", allow_continue: bool = True) -> dict | None:
    """Before Start (or after the engine refused with "earlier_run"): {} when the workspace holds no earlier run
    (and nothing was refused), {"resume": "latest"} for Continue, {"fresh": True} for Start over, None when the
    user cancelled. `allow_continue` False leaves Continue out (the refused run was already a resume of it)."""
    workspace = Path(preset.general.workspace_dir).expanduser()
    if preset.backup.resume and not refusal:  # the preset itself says which backup to continue
        return {}
    try:
        earlier = earlier_run(preset)
    except OSError:  # unreadable: the engine checks again and says why
        earlier = None
    if earlier is None and not refusal:
        return {}
    options = []
    resumable = earlier is not None and earlier.backup is not None and earlier.backup_step is not None
    if resumable and allow_continue:
        options.append(continue_label(earlier))
    options.append(START_OVER)
    answer = dialogs.choose(EARLIER_TITLE, earlier_run_message(earlier, workspace, refusal, allow_continue),
                            options)
    if answer == START_OVER:
        return {"fresh": True}
    if answer is not None and answer.startswith("Continue"):
        return {"resume": "latest"}
    return None


def changed_data_message(refusal: str) -> str:
    """The engine's list of what changed, and what resuming on it means."""
    return (f"{sentence(refusal)}\n\n“{RESUME_CHANGED}” continues from the backup on the files as they are "
            f"now: from there on, the data order differs from an uninterrupted run. “{START_OVER}” trains from "
            "step 0 on them and keeps the earlier run's files, moved aside.")


def ask_about_changed_data(dialogs, refusal: str) -> dict | None:
    """After a resume refused with "data_changed": {"resume": "latest", "allow_changed_data": True} when the
    user accepts the changed data, {"fresh": True} when they start over on it, None when they cancel."""
    answer = dialogs.choose(CHANGED_TITLE, changed_data_message(refusal), [RESUME_CHANGED, START_OVER])
    if answer == START_OVER:
        return {"fresh": True}
    return {"resume": "latest", "allow_changed_data": True} if answer == RESUME_CHANGED else None


def answer_refusal(dialogs, preset, event, options: dict) -> dict | None:
    """A run that refused to start (`event`: its RunFinished; `options`: how it was started) asks the user: for
    "earlier_run" continue or start over (Start's question, with the engine's reason), for "data_changed" resume
    on the changed data. Returns the options to start again with, or None (cancelled, or nothing to ask: a
    refused Start over is not asked again, its message says why)."""
    if event.refusal == "earlier_run" and not options.get("fresh"):
        return ask_about_earlier_run(dialogs, preset, refusal=event.message or "an earlier run's files are in the way",
                                     allow_continue=not options.get("resume"))
    if event.refusal == "data_changed":
        return ask_about_changed_data(dialogs, event.message)
    return None
