"""Training on several machines: two `accelerate launch` commands on this host play two machines of two CPU
processes each (gloo). Caches filled once per machine (or once when shared), outputs written once, resume equal to
the uninterrupted run, and the refusal when a machine does not see the backup; then the same logic without a launch
(processes as threads)."""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from safetensors.torch import load_file

from test_multiprocess import PROBE, SIZES, free_port, launch_args, preset_for, two_buckets  # noqa: F401 (fixture)
from trainer.config import save_preset
from trainer.errors import InputError, RunFailure
from trainer.train import processes
from trainer.train.checks import SHARED_BACKUP, start_disagreement
from trainer.train.processes import ProcessView, checked_together, fill_once_per_folder
from trainer.train.runs import complete_backups

MACHINES, PER_MACHINE = 2, 2
PROCESSES = MACHINES * PER_MACHINE


def machine_launch(machine: int, port: int, preset_path: Path, dump: Path, *extra) -> dict:
    """test_multiprocess.launch_args for machine `machine` of MACHINES, each running PER_MACHINE processes, all
    meeting at 127.0.0.1:port (the first machine's address, as on a real cluster)."""
    args = launch_args(preset_path, dump, *extra)
    cmd = args["args"]
    for option, value in (("--num_processes", PROCESSES), ("--num_machines", MACHINES), ("--main_process_port", port)):
        cmd[cmd.index(option) + 1] = str(value)
    at = cmd.index(str(PROBE))
    cmd[at:at] = ["--machine_rank", str(machine), "--main_process_ip", "127.0.0.1"]
    return args


def launch_machines(tmp: Path, name: str, extra: list[list[str]], timeout: float = 150) -> list[SimpleNamespace]:
    """Start both machines' launches together on tmp/preset.json (machine m with its options extra[m]), each
    process dumping into tmp/name (train_probe --rank-dump); wait for both (ending whatever a hang leaves).
    Returns per machine: returncode and output (stdout and stderr together)."""
    port, launched = free_port(), []
    for machine in range(MACHINES):
        with open(tmp / f"{name}-machine{machine}.log", "w") as log:  # a file: a full pipe would block the run
            launched.append(subprocess.Popen(**machine_launch(machine, port, tmp / "preset.json", tmp / name,
                                                              *extra[machine]), stdout=log, stderr=subprocess.STDOUT))
    try:
        for launcher in launched:
            launcher.wait(timeout)
    finally:  # after a hang: end the training processes too (they run in their own sessions)
        for launcher in launched:
            if launcher.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    for worker in psutil.Process(launcher.pid).children(recursive=True):
                        with contextlib.suppress(psutil.NoSuchProcess):
                            worker.kill()
                launcher.kill()
                launcher.wait()
    return [SimpleNamespace(returncode=launcher.returncode,
                            output=(tmp / f"{name}-machine{m}.log").read_text()) for m, launcher in enumerate(launched)]


def dumps(folder: Path) -> list[dict]:
    """Every process's train_probe record, in global rank order (the processes that wrote one)."""
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(PROCESSES)
            if (folder / f"rank{r}.json").is_file()]


def cache_entries(folder: Path) -> int:
    return len(list(folder.rglob("*.safetensors")))


@pytest.fixture(scope="module")
def two_machine_run(tiny_model_dir, two_buckets, tmp_path_factory):  # noqa: F811 - the imported fixture
    """A two-epoch run on two machines with a cache folder each; backups every 2 steps, a sample every 3. What
    the workspace held at its end and its final model are kept aside (later tests resume into it)."""
    tmp = tmp_path_factory.mktemp("machines")
    preset = preset_for(tmp, tiny_model_dir, two_buckets, training={"batch_size": 1}, general={"tensorboard": True},
                        backup={"backup_unit": "steps", "backup_every": 2, "rolling_backups": 0},
                        sampling={"unit": "steps", "every": 3,
                                  "prompts": [{"prompt": "picture 1", "width": 32, "height": 32, "steps": 2}]})
    save_preset(preset, tmp / "preset.json")
    launches = launch_machines(tmp, "dump", [["--set", f"general.cache_dir={tmp / f'cache{m}'}"]
                                             for m in range(MACHINES)])
    assert [run.returncode for run in launches] == [0, 0], launches[0].output[-3000:] + launches[1].output[-3000:]
    shutil.copy(preset.model.output_path, tmp / "uninterrupted.safetensors")
    workspace = tmp / "ws"
    ended = {"backups": [p.name for p in complete_backups(workspace / "backup")],
             "samples": sorted(p.name for p in (workspace / "samples").glob("*.png")),
             "tensorboard": len(list((workspace / "tensorboard").glob("events.out.tfevents.*")))}
    return SimpleNamespace(preset=preset, tmp=tmp, launches=launches, ranks=dumps(tmp / "dump"), ended=ended)


def test_two_machines_split_every_epoch_and_stay_identical(two_machine_run):
    ranks = two_machine_run.ranks
    assert [(r["process_index"], r["machine"], r["local_rank"]) for r in ranks] == \
        [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    assert {r["num_processes"] for r in ranks} == {PROCESSES} and {r["exit_code"] for r in ranks} == {0}
    assert len({r["unet_sha256"] for r in ranks}) == 1  # the same averaged gradient at every step, on each machine
    for epoch in ("0", "1"):
        shares = [set(r["positions"].get(epoch, [])) for r in ranks]
        assert sum(len(s) for s in shares) == len(set().union(*shares)) == len(SIZES)  # disjoint, nothing dropped
    # 9 micro-batches of one image an epoch, dealt to 4 processes: 3 steps (4, 4, 1), so 3 processes pad the last
    assert sum(r["padding"] for r in ranks) == 2 * 3
    out = two_machine_run.launches[0].output
    assert "completed after 6 steps" in out and out.count("completed:") == 1
    assert "completed:" not in two_machine_run.launches[1].output  # machine 1's processes report nothing


def test_each_machine_fills_its_own_cache_folder_once(two_machine_run):
    """Each machine's local main process encodes every entry into its machine's folder; the others only read."""
    ranks, tmp = two_machine_run.ranks, two_machine_run.tmp
    writes = [r["cache_writes"] for r in ranks]
    entries = writes[0]
    assert writes == [entries, 0, entries, 0] and entries >= 2 * len(SIZES)  # latents and caption embeddings
    for machine in range(MACHINES):
        assert cache_entries(tmp / f"cache{machine}" / "latents") + cache_entries(tmp / f"cache{machine}" / "text") \
            == entries
        assert not list((tmp / f"cache{machine}").glob(f"{processes.SHARE_TOKEN}*"))  # the check left nothing


def test_only_the_global_main_process_writes_outputs(two_machine_run):
    ranks, ended = two_machine_run.ranks, two_machine_run.ended
    assert [r["written"] for r in ranks[1:]] == [[], [], []]
    assert [kind for kind, _ in ranks[0]["written"]] == ["backup", "sample", "backup", "sample", "backup", "final"]
    assert ended["backups"] == ["step0000002-epoch0001", "step0000004-epoch0002", "step0000006-epoch0002"]
    assert ended["samples"] == ["step0000003-epoch0001-prompt00-seed0.png", "step0000006-epoch0002-prompt00-seed0.png"]
    assert ended["tensorboard"] == 1
    out = two_machine_run.launches[0].output
    assert out.count("final written:") == 1 and out.count("backup written:") == 3
    assert "written:" not in two_machine_run.launches[1].output


def test_resume_on_two_machines_sharing_a_cache_matches_the_uninterrupted_run(two_machine_run):
    """Resume from the mid-epoch backup of step 2 (the workspace is shared, as on one host) with a new cache folder
    that both machines share: the global main process alone fills it, and the final model equals the run's."""
    tmp, preset = two_machine_run.tmp, two_machine_run.preset
    backup = tmp / "ws" / "backup" / "step0000002-epoch0001"
    shared = ["--set", f"general.cache_dir={tmp / 'shared_cache'}", "--resume", str(backup), "--quiet"]
    launches = launch_machines(tmp, "dump_resumed", [shared] * MACHINES)
    assert [run.returncode for run in launches] == [0, 0], launches[0].output[-3000:] + launches[1].output[-3000:]
    ranks = dumps(tmp / "dump_resumed")
    assert len({r["unet_sha256"] for r in ranks}) == 1 and len(ranks) == PROCESSES
    entries = two_machine_run.ranks[0]["cache_writes"]
    assert [r["cache_writes"] for r in ranks] == [entries, 0, 0, 0]
    assert cache_entries(tmp / "shared_cache") == entries
    resumed, full = load_file(preset.model.output_path), load_file(str(tmp / "uninterrupted.safetensors"))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)


def test_resume_is_refused_when_machine_1_does_not_see_the_backup(two_machine_run):
    """Machine 1 has its own empty workspace (as when the workspace lies on machine 0's disk only): --resume
    latest is refused on every process with one message, exit code 2, and both launches end."""
    tmp = two_machine_run.tmp
    latest = complete_backups(tmp / "ws" / "backup")[-1].name
    elsewhere = ["--set", f"general.workspace_dir={tmp / 'machine1_ws'}"]
    launches = launch_machines(tmp, "dump_refused", [["--resume", "latest"], ["--resume", "latest", *elsewhere]],
                               timeout=90)
    assert all(run.returncode not in (0, None) for run in launches)  # torchrun reports its processes' failure
    out = launches[0].output
    assert f"backup.resume: machine 1 does not see the backup {latest} that machine 0 resumes from" in out, out[-3000:]
    assert SHARED_BACKUP in out and "Traceback" not in out.split("error: backup.resume")[0]
    ranks = dumps(tmp / "dump_refused")
    assert ranks and ranks[0]["process_index"] == 0 and {r["exit_code"] for r in ranks} == {2}
    assert "exitcode  : 2" in out  # torchrun's summary of the main process's exit
    assert not [p for p in (tmp / "machine1_ws").rglob("*") if p.is_file()]  # nothing written on machine 1


# ---- the same logic without a launch: processes as threads ------------------------------------------------

class ThreadGroup:
    """Processes of a launch played by threads: wait_for_everyone and an all-gather as torch.distributed's,
    and a machine rank per thread."""

    def __init__(self, count: int):
        self.barrier, self.slots, self.local = threading.Barrier(count, timeout=20), [None] * count, threading.local()

    def gather(self, accelerator, value) -> list:
        self.slots[accelerator.process_index] = value
        self.barrier.wait()
        gathered = list(self.slots)
        self.barrier.wait()  # every thread has read before any writes again
        return gathered

    def accelerator(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(num_processes=PROCESSES, process_index=index, is_main_process=index == 0,
                               is_local_main_process=index % PER_MACHINE == 0, wait_for_everyone=self.barrier.wait)

    def run(self, monkeypatch, body) -> list:
        """body(accelerator) on each of PROCESSES threads (machine = index // PER_MACHINE); its results or
        exceptions, in process order."""
        monkeypatch.setattr(processes, "gather_objects", self.gather)
        monkeypatch.setattr(processes, "machine_rank", lambda: self.local.machine)
        results = [None] * PROCESSES

        def play(index):
            self.local.machine = index // PER_MACHINE
            try:
                results[index] = body(self.accelerator(index))
            except Exception as error:  # noqa: BLE001 - the test looks at it
                results[index] = error
        threads = [threading.Thread(target=play, args=(i,)) for i in range(PROCESSES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        return results


@pytest.mark.parametrize("layout", ["a folder per machine", "one shared folder", "one machine"])
def test_fill_once_per_folder_lets_one_process_per_folder_fill_first(layout, tmp_path, monkeypatch):
    group, events, lock = ThreadGroup(PROCESSES), [], threading.Lock()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(PROCESSES if layout == "one machine" else PER_MACHINE))
    folders = [tmp_path / ("cache0" if layout != "a folder per machine" else f"cache{m}") for m in range(MACHINES)]

    def body(accelerator):
        folder = folders[accelerator.process_index // PER_MACHINE]
        with fill_once_per_folder(accelerator, str(folder), ""):
            with lock:
                events.append(("in", accelerator.process_index, sorted(p.name for p in folder.glob(".*"))))
            with lock:
                events.append(("out", accelerator.process_index))
    assert group.run(monkeypatch, body) == [None] * PROCESSES
    fillers = {0, PER_MACHINE} if layout == "a folder per machine" else {0}
    entered = [index for kind, index, *_ in events if kind == "in"]
    assert set(entered[:len(fillers)]) == fillers and sorted(entered) == list(range(PROCESSES))
    last_filler_out = max(k for k, (kind, index, *_) in enumerate(events) if kind == "out" and index in fillers)
    first_reader_in = min(k for k, (kind, index, *_) in enumerate(events) if kind == "in" and index not in fillers)
    assert last_filler_out < first_reader_in  # the others waited for every filler
    assert all(seen == [] for kind, _, *rest in events if kind == "in" for seen in rest)  # the token is gone
    if layout == "one machine":
        assert not folders[0].exists()  # no token was needed: nothing written


def view(process: int, failure=None, **facts) -> ProcessView:
    return ProcessView(process, process // PER_MACHINE, failure, facts)


BACKUP = ("step0000004-epoch0002", "a" * 64)
DATA = (9, "d" * 64)


def test_start_disagreement_names_the_machine_and_what_it_needs():
    same = [view(p, backup=BACKUP) for p in range(PROCESSES)]
    assert start_disagreement(same) is None
    assert start_disagreement([view(p, backup=None) for p in range(PROCESSES)]) is None
    missing = same[:2] + [view(2, ("input", "backup.resume: no complete backup in /w/backup to resume from", "")),
                          view(3, ("input", "backup.resume: no complete backup in /w/backup to resume from", ""))]
    error = start_disagreement(missing)
    assert str(error).startswith("backup.resume: machine 1 does not see the backup step0000004-epoch0002 that "
                                 "machine 0 resumes from (backup.resume: no complete backup in /w/backup")
    assert str(error).endswith(SHARED_BACKUP)
    older = same[:3] + [view(3, backup=("step0000002-epoch0001", "b" * 64))]
    assert "machine 1 does not see the backup step0000004-epoch0002" in str(start_disagreement(older))
    assert "(it finds step0000002-epoch0001)" in str(start_disagreement(older))
    changed = same[:2] + [view(2, backup=(BACKUP[0], "c" * 64)), view(3, backup=BACKUP)]
    assert "(its copy differs)" in str(start_disagreement(changed))
    fresh_main = [view(0, backup=None)] + same[1:]
    assert "machine 0 starts fresh" in str(start_disagreement(fresh_main))
    # the images: every machine must read the same ones
    assert start_disagreement([view(p, dataset=DATA) for p in range(PROCESSES)]) is None
    other_data = [view(p, dataset=DATA if p < 2 else (8, "e" * 64)) for p in range(PROCESSES)]
    assert str(start_disagreement(other_data)).startswith("concepts: machine 1 reads other images or captions than "
                                                          "machine 0 (8 image(s) there, 9 on machine 0)")
    # failures that are not about the backup, and the main process's own, are left to checked_together
    assert start_disagreement(same[:3] + [view(3, ("input", "concept 'x': no images in /d", ""))]) is None
    assert start_disagreement([view(0, ("input", "backup.resume: no backup", ""))] + same[1:]) is None


def test_checked_together_refuses_on_every_process_at_once(monkeypatch):
    """A refusal on machine 1 only (it sees no backup) ends every process with the same InputError, and a process
    that fails otherwise ends the others with a RunFailure naming it; no process is left waiting."""
    def resume(accelerator):
        with checked_together(accelerator, start_disagreement) as facts:
            if accelerator.process_index >= PER_MACHINE:
                raise InputError("backup.resume: no complete backup in /elsewhere/backup to resume from")
            facts["backup"] = BACKUP
        return "started"
    results = ThreadGroup(PROCESSES).run(monkeypatch, resume)
    assert all(isinstance(r, InputError) for r in results)
    assert len({str(r) for r in results}) == 1
    assert str(results[0]).startswith(f"backup.resume: machine 1 does not see the backup {BACKUP[0]}")

    own = {}

    def refuse_on_one(accelerator):
        with checked_together(accelerator, start_disagreement):
            if accelerator.process_index == 3:
                own[3] = InputError("general.cache_dir: not writable", refusal="some_refusal")
                raise own[3]
        return "started"
    results = ThreadGroup(PROCESSES).run(monkeypatch, refuse_on_one)
    assert results[3] is own[3]  # its own exception, as it was raised
    assert [str(r) for r in results[:3]] == ["general.cache_dir: not writable (on machine 1)"] * 3
    assert all(r.refusal == "some_refusal" for r in results)

    def bug_on_main(accelerator):
        with checked_together(accelerator):
            if accelerator.is_main_process:
                raise KeyError("oops")
        return "started"
    results = ThreadGroup(PROCESSES).run(monkeypatch, bug_on_main)
    assert isinstance(results[0], KeyError)
    assert all(isinstance(r, RunFailure) and "process 0 (machine 0) failed" in str(r) for r in results[1:])

    def agree(accelerator):
        with checked_together(accelerator, start_disagreement) as facts:
            facts.update(backup=BACKUP, dataset=DATA)
        return "started"
    assert ThreadGroup(PROCESSES).run(monkeypatch, agree) == ["started"] * PROCESSES
