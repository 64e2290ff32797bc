"""Several processes under `accelerate launch`, on one machine or several: building the Accelerator, who reports
and writes, who fills a folder while the others wait, and taking the same decision on every process (commands,
refusals). No UI here."""
from __future__ import annotations

import contextlib
import datetime
import os
import queue
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from trainer import events as ev
from trainer.config import Preset
from trainer.errors import InputError, RunFailure, is_input_error

SHARE_TOKEN = ".seachange-share-check-"  # + a random token: a file the main process writes to learn who shares a folder


def make_accelerator(preset: Preset):
    """The one place that builds an Accelerator. accelerate keeps process-wide state, so a second run in the
    same process (the window runs many) with other precision settings must reset it first.

    Under `accelerate launch` the processes wait for the main one while it fills caches, samples or writes a
    backup; the process group's timeout (30 min for gloo, 10 for NCCL by default) is raised so that such a
    wait is not taken for a hang."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import InitProcessGroupKwargs
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    patience = InitProcessGroupKwargs(timeout=datetime.timedelta(hours=3))
    return Accelerator(cpu=preset.general.device == "cpu", mixed_precision=preset.training.mixed_precision,
                       kwargs_handlers=[patience])


def main_process_only(emit: Callable, accelerator) -> Callable:
    """Under `accelerate launch` only the main process reports (progress, samples, logs); the others pass on
    errors alone, so a failure on any process is still seen."""
    if accelerator.is_main_process:
        return emit
    return lambda event: emit(event) if isinstance(event, ev.Log) and event.level == "error" else None


@contextlib.contextmanager
def main_process_first(accelerator):
    """The main process runs the block first (it may write: the demo, the file index, the caches) while the
    others wait, then they run it (and find its files). Unlike accelerate's own, this one also lets the others
    go when the block fails on the main process, so they fail the same way instead of waiting for ever."""
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if accelerator.is_main_process:
            accelerator.wait_for_everyone()


# ---- several machines ------------------------------------------------------------------------------------

def gather_objects(accelerator, value) -> list:
    """Every process's `value` (anything picklable), in process order, on every process; [value] with one process.
    A collective (torch.distributed.all_gather_object): every process must call it at the same point of the run."""
    if accelerator.num_processes == 1:
        return [value]
    gathered = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def machine_rank() -> int:
    """This process's machine: `accelerate launch --machine_rank` (torchrun's GROUP_RANK); 0 outside a launch."""
    return int(os.environ.get("GROUP_RANK", "0") or 0)


def on_one_machine(accelerator) -> bool:
    """Whether every process runs on this machine (one process, or torchrun's LOCAL_WORLD_SIZE counts them all):
    then every process sees the main process's folders, and no token file is needed to find out."""
    return accelerator.num_processes == 1 or int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) == \
        accelerator.num_processes


def write_share_token(folders: list[Path]) -> str | None:
    """Write a new random token (32 hex digits) into each folder (created if missing) as the file
    SHARE_TOKEN + token; returns the token, or None when a folder cannot take it (nothing is left behind then)."""
    token = secrets.token_hex(16)
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{SHARE_TOKEN}{token}").write_text(token, encoding="ascii")
    except OSError:
        remove_share_token(folders, token)
        return None
    return token


def sees_share_token(folders: list[Path], token: str | None) -> bool:
    """Whether every folder holds the token file that write_share_token wrote (on this machine or another)."""
    try:
        return token is not None and all((folder / f"{SHARE_TOKEN}{token}").read_text(encoding="ascii") == token
                                         for folder in folders)
    except OSError:
        return False


def remove_share_token(folders: list[Path], token: str) -> None:
    """Remove the token files of write_share_token (those that exist)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            (folder / f"{SHARE_TOKEN}{token}").unlink()


def shares_folders_with_main(accelerator, folders: list[Path]) -> bool:
    """Whether this process reads the very folders the global main process reads (one folder on a disk both
    reach), not same-named folders of its own machine. On one machine: True, and nothing is written. Across
    machines the main process writes a random token file into each folder, every process looks for it, then
    the main process removes it. A collective: every process calls it with the same folders. A folder that two
    other machines share, but the main one does not, counts as theirs each (their writes are atomic, so they
    only repeat each other's work)."""
    if on_one_machine(accelerator):
        return True
    token = write_share_token(folders) if accelerator.is_main_process else None
    token = gather_objects(accelerator, token)[0]
    seen = sees_share_token(folders, token)
    accelerator.wait_for_everyone()  # every process has looked
    if accelerator.is_main_process and token is not None:
        remove_share_token(folders, token)
    return seen


@contextlib.contextmanager
def fill_once_per_folder(accelerator, *folders: str):
    """Fill folders (the caches, the demo) once where they are: the process that fills runs the block first while
    the others wait, then they run it and find its files (reading, writing nothing). The filler is the global
    main process and, on each other machine whose folders are not the main process's (shares_folders_with_main),
    its local main process: each machine fills its local folders once, a folder every machine shares is filled
    once. One machine: as main_process_first. Empty folder names are left out. If the block fails on a filler,
    the others are let go too (and fail the same way) instead of waiting for ever."""
    paths = [Path(folder).expanduser() for folder in folders if folder]
    shared = shares_folders_with_main(accelerator, paths)
    fills = accelerator.is_main_process or (accelerator.is_local_main_process and not shared)
    if not fills:
        accelerator.wait_for_everyone()
    try:
        yield
    finally:
        if fills:
            accelerator.wait_for_everyone()


@dataclass
class ProcessView:
    """What one process found in a block of checked_together: its process index and machine (machine_rank), its
    failure as (kind 'input' or 'other', message, InputError.refusal) or None, and `facts`: names -> picklable
    values the block recorded, which the processes compare."""
    process: int
    machine: int
    failure: tuple[str, str, str] | None = None
    facts: dict = field(default_factory=dict)


def first_failure(views: list[ProcessView]) -> ProcessView | None:
    """The view of the lowest-numbered process that failed, or None."""
    return next((view for view in views if view.failure is not None), None)


@contextlib.contextmanager
def checked_together(accelerator, disagreement: Callable[[list[ProcessView]], Exception | None] | None = None):
    """Run checks on every process and refuse on every process together, so that no process goes on to wait for
    one that stopped. The block gets a dict to record facts in (see ProcessView); afterwards every process
    gathers every view and:
    1. raises what disagreement(views) returns (e.g. an InputError: the processes see different backups);
    2. else, when a process failed, raises on every process the failure of the lowest-numbered one: there it is
       its own exception (traceback intact); elsewhere an InputError with its message (and refusal) for the
       user's mistakes (errors.is_input_error), '(on machine N)' added when that is not the main process's
       machine, or a RunFailure naming the process for any other exception.
    With one process: the block runs plainly, exceptions pass as they are. The block must run the same
    collectives on every process whether it fails or not (main_process_first and fill_once_per_folder do)."""
    facts: dict = {}
    if accelerator.num_processes == 1:
        yield facts
        return
    own = None
    view = ProcessView(accelerator.process_index, machine_rank(), None, facts)
    try:
        yield facts
    except Exception as error:  # noqa: BLE001 - every failure is passed to every process below
        own = error
        kind = "input" if is_input_error(error) else "other"
        view.failure = (kind, str(error) or type(error).__name__, getattr(error, "refusal", ""))
    views = gather_objects(accelerator, view)
    problem = disagreement(views) if disagreement is not None else None
    failed = first_failure(views)
    if problem is None and failed is not None:
        if failed.process == view.process:
            raise own
        kind, message, refusal = failed.failure
        if kind != "input":
            raise RunFailure(f"process {failed.process} (machine {failed.machine}) failed: {message}; its own "
                             "output says more")
        where = f" (on machine {failed.machine})" if failed.machine != views[0].machine else ""
        problem = InputError(message + where, refusal)
    if problem is not None:
        raise problem from own


def mean_over_processes(accelerator, value: torch.Tensor) -> torch.Tensor:
    """The mean of a per-process 0-d tensor over all processes (the tensor itself with one process), on the
    device. A NaN on any process makes the mean NaN everywhere, so every process takes the same decision."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.reshape(1).float(), "mean").reshape(())


def commands_now(accelerator, commands: queue.Queue | None) -> set[str]:
    """The names of the commands (events.COMMANDS: stop, sample, backup, save now) that reached any process since
    the last call, on every process. They must take effect at the same step everywhere: a process that stopped
    alone would leave the others waiting in the next gradient exchange. (The window runs one process; a signal or
    Ctrl-C under `accelerate launch` may reach one process or all.)"""
    names = set()
    while commands is not None:
        try:
            names.add(commands.get_nowait().name)
        except queue.Empty:
            break
    if accelerator.num_processes == 1:
        return names
    flags = torch.tensor([float(name in names) for name in ev.COMMANDS], device=accelerator.device)
    flags = accelerator.reduce(flags, "sum")
    return {name for name, flag in zip(ev.COMMANDS, flags.tolist()) if flag > 0}


def use_cpu_threads(count: int, device: torch.device) -> int:
    """Train on `count` torch threads when the device is the CPU (general.cpu_threads; 0 keeps torch's choice).
    Returns the count the process had, to give back with torch.set_num_threads when the run ends."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and count:
        torch.set_num_threads(count)
    return threads
