"""The queue's runner: trains the runs of a QUEUE.json (trainer/tools/run_queue.py) one after another through the normal
training path, keeps QUEUE.state.json and tells the window each run's state (events.QueueRunState). Torch-free
itself; the training it is handed loads torch. No UI here."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import queue
import time
from pathlib import Path
from typing import Callable

from trainer import events as ev
from trainer.errors import InputError
from trainer.tools.run_queue import (QueueRun, QueueState, RunState, check_queue, read_state, run_settings,
                                     running_lock,
                                     state_lock, write_state)
from trainer.train.runs import backup_root, complete_backups, output_file, read_run_id

# run_training(preset, resume, fresh, emit, commands): one training that emits its events and exactly one
# RunFinished, and never raises for a failed run (trainer.session.run_job's contract; session.queue_job hands it).
RunTraining = Callable[..., None]


def run_queue(path: str | Path, emit: Callable, commands: queue.Queue | None,
              run_training: RunTraining) -> ev.RunFinished:
    """Run QUEUE.json at `path`: check every run (run_queue.check_queue: InputError before anything runs, nothing
    written), then train each run that is not completed, in the queue's order, through `run_training`.

    A new run starts fresh; one this queue started before (stopped, interrupted by a crash or a closed window, or
    failed) continues from its newest complete backup, or without one starts over (how_to_start). A failed run
    (its RunFinished failed, an InputError included) is recorded with its message and the queue goes on. A stop
    command stops the current run (it writes its backup as a stopped training does) and the queue. After each
    run the queue file is read again if it changed (runs matched by name) and the pause flag honoured
    (run_queue.set_pause). The training's events pass to `emit` except each run's RunFinished; each change of a
    run's state is written to QUEUE.state.json and emitted as a QueueRunState. Returns the queue's RunFinished:
    completed (every run completed), failed (some failed; each named) or stopped (stopped or paused). InputError
    also when another runner runs this queue."""
    path = Path(path).expanduser().absolute()
    runs = check_queue(path)
    check_starts(runs, read_state(path))
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(running_lock(path))
        except BlockingIOError:
            raise InputError(f"{path}: this queue is running already (in the window or another command); stop it "
                             "there, or wait for it to end") from None
        except OSError as e:
            raise InputError(f"{path}: the queue's state cannot be written beside it ({e.strerror or e}); move the "
                             "queue file to a folder you can write to") from None
        return QueueRunner(path, runs, emit, commands, run_training).run()


def check_starts(runs: list[QueueRun], state: QueueState) -> None:
    """Before anything runs: every run that would start new (how_to_start) has a workspace that holds no earlier
    run and a model file that does not exist yet, else InputError naming the run and what to do (found now, not
    when the run's turn comes in the night)."""
    for run in runs:
        record = state.runs.get(run.name, RunState())
        if record.status == "completed" or how_to_start(run, record) != (None, False):
            continue
        if read_run_id(run.workspace):
            raise InputError(f"run {run.name}: its workspace {run.workspace} holds an earlier run that this queue did "
                             "not start: move that folder away, or rename the entry")
        output = output_file(run.preset)
        if output.exists():
            raise InputError(f"run {run.name}: {output} exists and this queue did not write it: move it away, or "
                             "rename the entry")


def how_to_start(run: QueueRun, record: RunState) -> tuple[str | None, bool]:
    """(resume, fresh) for trainer.train.loop.train: a run this queue already started in its workspace (the run id in
    its record is the workspace's) continues from its newest complete backup ('latest'), or without one starts
    over (fresh: what it left is moved to WORKSPACE/earlier/). Any other run starts new (None, False), so a
    workspace that holds someone else's run is refused, never overwritten."""
    if record.run_id and read_run_id(run.workspace) == record.run_id:
        return ("latest", False) if complete_backups(backup_root(run.preset)) else (None, True)
    return None, False


class QueueRunner:
    """One invocation of a queue (run_queue): the runs as last read, their records (by name), and the runs tried
    in this invocation (a failed run is tried once per invocation)."""

    def __init__(self, path: Path, runs: list[QueueRun], emit: Callable, commands: queue.Queue | None,
                 run_training: RunTraining):
        self.path, self.runs, self.emit, self.commands, self.run_training = path, runs, emit, commands, run_training
        self.signature = _signature(path)
        self.records = read_state(path).runs
        self.tried: set[str] = set()

    def run(self) -> ev.RunFinished:
        """Train the runs not completed, in order, until the end, a stop or a pause; the queue's RunFinished."""
        self._adopt()
        while (run := self._next()) is not None:
            if self._stop_asked():
                return ev.RunFinished("stopped", f"Queue stopped before run {run.name}; run the queue again to "
                                                 "continue.")
            finished = self._train(run)
            if finished.outcome == "stopped":
                how = ("continues from its last backup" if complete_backups(backup_root(run.preset))
                       else "starts over (it has no backup)")
                return ev.RunFinished("stopped", f"Queue stopped during run {run.name} (step {finished.step}); run "
                                                 f"the queue again to continue: {run.name} {how}.")
            self._reread()
            if self._take_pause() and (after := self._next()) is not None:
                left = sum(self.records[r.name].status != "completed" for r in self.runs)
                return ev.RunFinished("stopped", f"Queue paused after run {run.name}, as asked; {left} run(s) "
                                                 f"left: run the queue again to continue with {after.name}.")
        return self._summary()

    # ---- one run

    def _train(self, run: QueueRun) -> ev.RunFinished:
        """Train `run` (its record: running, then how it ended) and return its RunFinished."""
        record = self.records[run.name]
        resume, fresh = how_to_start(run, record)
        self.tried.add(run.name)
        if resume or fresh:
            self.emit(ev.Log("info", f"Queue: run {run.name} " + (
                "continues from its last backup" if resume else
                "starts over (what it left is moved to its workspace's earlier/ folder)")))
        if not resume:
            record.started, record.final_loss, record.validation_loss, record.model = _now(), None, None, ""
        record.status, record.message, record.finished = "running", "", ""
        record.workspace, record.settings = str(run.workspace), run_settings(run)
        self._changed(run.name)
        finished = self._one_training(run, record, resume, fresh)
        record.status = finished.outcome if finished.outcome in ("completed", "stopped") else "failed"
        record.message, record.finished = finished.message, _now()
        record.model = finished.output_path or record.model
        self._changed(run.name)
        return finished

    def _one_training(self, run: QueueRun, record: RunState, resume: str | None, fresh: bool) -> ev.RunFinished:
        """The training's events pass on, but for its RunFinished, which is returned; on the way the record
        takes the run id (once the run has claimed its workspace) and the last losses."""
        results: list[ev.RunFinished] = []

        def forward(event) -> None:
            if isinstance(event, ev.RunFinished):
                results.append(event)
                return
            if isinstance(event, ev.RunStarted):
                record.run_id = read_run_id(Path(event.workspace)) or record.run_id
                self._save()  # from here on an interrupted run continues in its workspace
            elif isinstance(event, ev.Progress) and math.isfinite(event.smooth_loss):
                record.final_loss = event.smooth_loss
            elif isinstance(event, ev.ValidationLoss) and math.isfinite(event.loss):
                record.validation_loss = event.loss
            self.emit(event)
        self.run_training(copy.deepcopy(run.preset), resume, fresh, forward, self.commands)
        return results[-1] if results else ev.RunFinished("failed", "the run ended without a result")

    # ---- between runs

    def _next(self) -> QueueRun | None:
        """The first run, in the queue's order, neither completed nor tried in this invocation."""
        return next((run for run in self.runs
                     if self.records[run.name].status != "completed" and run.name not in self.tried), None)

    def _stop_asked(self) -> bool:
        """Whether a stop came between runs (other commands then are for no run and are dropped)."""
        asked = False
        while self.commands is not None:
            try:
                asked |= self.commands.get_nowait().name == ev.STOP
            except queue.Empty:
                break
        return asked

    def _reread(self) -> None:
        """Take the queue file's new runs when it changed (matched by name: their records stay). A file that no
        longer checks is said in the log, and the runs go on as they were read before."""
        signature = _signature(self.path)
        if signature == self.signature:
            return
        self.signature = signature
        try:
            self.runs = check_queue(self.path)
        except InputError as e:
            self.emit(ev.Log("warning", f"{self.path.name} changed but cannot be used ({e}); the queue goes on as "
                                        "it was read before"))
            return
        self._adopt()

    def _take_pause(self) -> bool:
        """Whether the pause flag is set; it is cleared as it is honoured."""
        with state_lock(self.path):
            state = read_state(self.path)
            if state.pause_after_current:
                write_state(self.path, QueueState(self.records, False))
            return state.pause_after_current

    # ---- the state

    def _adopt(self) -> None:
        """A record for every run (pending when new), written, and each run's state emitted in the queue's order."""
        for run in self.runs:
            record = self.records.setdefault(run.name, RunState())
            if record.status == "pending":
                record.workspace = str(run.workspace)
        self._save()
        for run in self.runs:
            self._emit_state(run.name)

    def _save(self) -> None:
        """Write the records, keeping the pause flag as it is on disk (the window may have set it)."""
        with state_lock(self.path):
            write_state(self.path, QueueState(self.records, read_state(self.path).pause_after_current))

    def _changed(self, name: str) -> None:
        self._save()
        self._emit_state(name)

    def _emit_state(self, name: str) -> None:
        r = self.records[name]
        self.emit(ev.QueueRunState(name, r.status, r.message, r.final_loss, r.model, r.workspace,
                                   r.validation_loss))

    def _summary(self) -> ev.RunFinished:
        names = [run.name for run in self.runs]
        failed = [name for name in names if self.records[name].status == "failed"]
        done = sum(self.records[name].status == "completed" for name in names)
        if failed:
            said = "; ".join(f"{name} ({(self.records[name].message.splitlines() or [''])[0]})" for name in failed)
            return ev.RunFinished("failed", f"Queue done: {done} of {len(names)} runs completed; failed: {said}")
        return ev.RunFinished("completed", f"Queue done: all {len(names)} runs completed")


def describe_runs(runs: list[QueueRun], state: QueueState) -> list[str]:
    """Lines for `python -m trainer queue --dry-run`: per run its name, status and what running the queue would do
    with it, its workspace, where its models go, and the settings that differ from its entry's preset."""
    lines = []
    for number, run in enumerate(runs, 1):
        record = state.runs.get(run.name, RunState())
        resume, fresh = how_to_start(run, record)
        changed = record.settings and record.settings != run_settings(run)
        what = (("skipped, though its settings changed since it ran: rename the entry to run it again" if changed
                 else "skipped") if record.status == "completed" else "continues from its last backup"
                if resume else "starts over" if fresh else "starts")
        model, training = run.preset.model, run.preset.training
        lines += [f"{number}. {run.name} [{record.status}; {what}]", f"   workspace: {run.workspace.absolute()}",
                  f"   {'model' if training.method == 'full' else training.method}: "
                  f"{output_file(run.preset).absolute()}"]
        if training.method == "lora" and model.merged_output_path:
            lines.append(f"   merged model: {model.merged_output_path}")
        if training.method != "embedding" and training.embedding_placeholder:
            word = Path(model.output_path).parent / f"{training.embedding_placeholder}.safetensors"
            lines.append(f"   embedding: {word}")
        lines += [f"   {line}" for line in run.differences()]
    return lines


def _signature(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
