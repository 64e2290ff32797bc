"""Sessions: a training or a tool (generate-data, compare, caption) run in the background; events out, commands
in. No UI.

A session runs its job in a thread of this process, or (process=True, what the window uses) in a child process:
torch then never loads into the window's process, and nothing the job does (importing torch, loading or writing
a model, a crash) can hold the window's Python interpreter. Events are plain picklable data either way, and
`events` is a queue.Queue in both modes. Importing this module is cheap.
"""
from __future__ import annotations

import copy
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import traceback
from typing import Callable

from trainer import events as ev
from trainer.config import Preset


# ---- the jobs (module level, so a child process can be handed them) ------------------------------------------

def train_job(emit, commands, preset: Preset, resume: str | None, fresh: bool = False,
              allow_changed_data: bool = False):
    from trainer.train.loop import train  # lazy: torch loads in the worker, never before the window paints
    return train(preset, emit, commands, resume=resume, fresh=fresh, allow_changed_data=allow_changed_data)


def generate_data_job(emit, commands, spec):
    from trainer.tools.generate_data import generate_data
    return generate_data(spec, emit, commands)


def caption_job(emit, commands, spec, preview_count: int = 0):
    """Caption spec.image_dir (trainer.tools.captioning.caption); with preview_count, propose that many captions as
    ImageGenerated events and write nothing."""
    from trainer.tools import captioning
    if not preview_count:
        return captioning.caption(spec, emit, commands)
    found = captioning.preview(spec, preview_count, emit, commands)
    return ev.RunFinished("completed", f"{len(found)} caption(s) proposed; nothing was written", spec.image_dir)


def compare_job(emit, commands, spec):
    from trainer.tools.compare import compare
    return compare(spec, emit, commands)


def queue_job(emit, commands, path: str):
    """Run the queue QUEUE.json at `path` (trainer.tools.queue_runner.run_queue), each of its runs through run_job."""
    from trainer.tools.queue_runner import run_queue
    return run_queue(path, emit, commands, _queue_training)


queue_job.records_runs = True  # each run of a queue is recorded in its own workspace, by its own run_job


def _queue_training(preset: Preset, resume: str | None, fresh: bool, emit, commands) -> None:
    run_job(train_job, (preset, resume, fresh), emit, commands)


def run_job(job: Callable, args: tuple, emit, commands) -> None:
    """Run a job and emit its RunFinished: exactly one, last, whatever happens. The user's mistakes (bad preset,
    input or model file) and known failures of the run (errors.is_run_failure) end with their message alone; any
    other failure is a bug and also logs its traceback. No text carries terminal escape codes. A training's
    events are also recorded in its workspace (event_log.EventRecorder; a job marked records_runs, the queue,
    records each of its runs itself)."""
    from trainer.errors import plain_text
    from trainer.event_log import EventRecorder
    finished = ev.RunFinished("failed", "the run ended without a result")
    if not getattr(job, "records_runs", False):
        emit = EventRecorder(emit)

    def clean_emit(event):
        if isinstance(event, ev.Log):
            event = ev.Log(event.level, plain_text(event.text))
        emit(event)
    try:
        finished = job(clean_emit, commands, *args)
    except Exception as e:  # noqa: BLE001 - any failure becomes a "failed" event with its message
        from trainer.errors import describe_failure, is_input_error, is_run_failure
        bad_input = is_input_error(e)
        if not bad_input and not is_run_failure(e):  # a bug: its traceback goes to the log
            clean_emit(ev.Log("error", traceback.format_exc()))
        finished = ev.RunFinished("failed", describe_failure(e), bad_input=bad_input,
                                  refusal=getattr(e, "refusal", "") if bad_input else "")
    finally:
        emit(finished)


# ---- a child process: `python -m trainer.session` reads its job and commands on stdin, writes events to stdout,
# each a length-prefixed pickle. Plain subprocess pipes, so nothing of the parent (its main module, Tk) is copied.

def write_frame(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def read_frame(stream):
    """The next object, or None at the end of the stream."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


def child_main() -> None:
    """A child process's whole life. Ctrl-C reaches the parent, which sends a stop command instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, never into the event stream
    job, args = read_frame(sys.stdin.buffer)
    commands: queue.Queue = queue.Queue()

    def read_commands():
        while (command := read_frame(sys.stdin.buffer)) is not None:
            commands.put(command)
        commands.put(ev.Command(ev.STOP))  # the parent is gone: stop cleanly
    threading.Thread(target=read_commands, daemon=True).start()
    lock = threading.Lock()

    def emit(event):
        with lock:
            write_frame(frames, event)
    run_job(job, args, emit, commands)


class Session:
    """One run of a job: `job(emit, commands, *args)` returns its RunFinished.

    The worker puts events on `self.events` (exactly one RunFinished, last); commands sent with `send()` are
    checked at the job's natural boundaries (optimizer steps, images).
    """

    def __init__(self, job: Callable, args: tuple = (), process: bool = False, name: str = "seachange-job"):
        self._job, self._args, self._name = job, args, name
        self.process = process
        self.events: queue.Queue = queue.Queue()
        self.commands: queue.Queue = queue.Queue()
        self._child: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a session runs once; make a new session for the next run")
        if self.process:
            self._child = subprocess.Popen([sys.executable, "-m", "trainer.session"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, cwd=os.getcwd())
            write_frame(self._child.stdin, (self._job, self._args))
            target, args = self._pump, ()
        else:
            target, args = run_job, (self._job, self._args, self.events.put, self.commands)
        self._thread = threading.Thread(target=target, args=args, name=self._name, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        """Forward the child's events; if it dies without its RunFinished, say so in one."""
        child = self._child
        while (event := read_frame(child.stdout)) is not None:
            self.events.put(event)
            if isinstance(event, ev.RunFinished):
                break
        else:
            code = child.wait()
            self.events.put(ev.Log("error", f"the worker process exited with code {code}"))
            self.events.put(ev.RunFinished("failed", f"The worker process ended unexpectedly (exit code {code}): "
                                                     "it may have run out of memory or crashed. The last backup "
                                                     "is intact."))
        try:
            child.stdin.close()  # the child's command reader ends; it exits
        except OSError:
            pass
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()

    def send(self, name: str) -> None:
        """Send the command `name` (one of events.COMMANDS); ValueError for any other name."""
        if name not in ev.COMMANDS:
            raise ValueError(f"unknown command {name!r}; expected one of {', '.join(ev.COMMANDS)}")
        command = ev.Command(name)
        if self._child is None:
            self.commands.put(command)
            return
        try:
            write_frame(self._child.stdin, command)
        except (OSError, ValueError):  # the child has ended already
            pass

    def stop(self) -> None:
        self.send(ev.STOP)

    def kill(self) -> None:
        """End a child process at once (a session that ignores stop); a thread cannot be killed."""
        if self._child is not None and self._child.poll() is None:
            self._child.kill()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running


class TrainingSession(Session):
    """One training. Start deep-copies the preset; the worker treats its copy as read-only."""

    def __init__(self, preset: Preset, resume: str | None = None, process: bool = False, fresh: bool = False,
                 allow_changed_data: bool = False):
        """resume: 'latest' or a backup folder; fresh: start over where an earlier run left files (they are moved
        aside, see trainer.train.runs); allow_changed_data: resume although the concepts' files changed."""
        self.preset = copy.deepcopy(preset)
        self.resume, self.fresh, self.allow_changed_data = resume, fresh, allow_changed_data
        super().__init__(train_job, (self.preset, resume, fresh, allow_changed_data), process,
                         "seachange-training")


def generate_data_session(spec, process: bool = False) -> Session:
    """A session that runs generate-data on a copy of `spec` (a trainer.specs.GenerateDataSpec)."""
    return Session(generate_data_job, (copy.deepcopy(spec),), process, "seachange-generate-data")


def compare_session(spec, process: bool = False) -> Session:
    """A session that builds a comparison grid from a copy of `spec` (a trainer.specs.CompareSpec)."""
    return Session(compare_job, (copy.deepcopy(spec),), process, "seachange-compare")


def queue_session(path, process: bool = False) -> Session:
    """A session that runs the queue QUEUE.json at `path` (trainer.tools.queue_runner.run_queue): the runs' training
    events, a QueueRunState at each change of a run's state, one RunFinished for the queue; stop() stops the current
    run (it writes its backup) and the queue. Pause after the current run: trainer.tools.run_queue.set_pause."""
    return Session(queue_job, (str(path),), process, "seachange-queue")


def caption_session(spec, process: bool = False, preview_count: int = 0) -> Session:
    """A session that captions images with a copy of `spec` (a trainer.specs.CaptionSpec); with preview_count,
    one that proposes that many captions (ImageGenerated events) and writes nothing."""
    return Session(caption_job, (copy.deepcopy(spec), preview_count), process, "seachange-caption")


def concept_statistics(preset: Preset) -> list[dict]:
    """Per concept: images, usable and skipped files with reasons, missing captions, caption lengths and the
    bucket histogram (plain data; may take a while on big folders, so call it off the UI thread)."""
    from trainer.data.stats import concept_stats  # no torch: safe before the first run
    return concept_stats(copy.deepcopy(preset))


if __name__ == "__main__":
    child_main()
