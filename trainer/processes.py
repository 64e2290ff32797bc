"""Several processes under `accelerate launch`: building the Accelerator, who reports and writes, waiting for the
main process, and taking the same decision on every process. No UI here."""
from __future__ import annotations

import contextlib
import datetime
import queue
from typing import Callable

import torch

from trainer import events as ev
from trainer.config import Preset


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
