"""A queue of runs and sweeps (trainer/tools/run_queue.py, queue_runner.py): expansion and naming, refusal before
anything runs, failures recorded while the queue goes on, stop and continue, pause after the current run, a queue
file changed between runs, the command line."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_presets import make_preset

from trainer import events as ev
from trainer.config import Preset, preset_to_dict
from trainer.errors import InputError
from trainer.event_log import read_event_log
from trainer.session import queue_job, run_job
from trainer.tools.queue_runner import how_to_start, run_queue
from trainer.tools.run_queue import (QueueEntry, QueueFile, RunState, check_queue, expand_queue, key_labels, read_queue,
                                     read_state, running_lock, safe_part, set_pause, state_path, write_queue)
from trainer.train.runs import MANIFEST, RUN_ID_KEY, complete_backups, model_metadata, write_run_file

ROOT = Path(__file__).resolve().parents[1]


def base_data(tmp_path, model_dir, concept_dir, **sections) -> dict:
    """A tiny CPU preset as a dict (what the window puts in an entry's preset_data): 2 steps, no sampling."""
    sections["training"] = {"max_steps": 2, **sections.get("training", {})}
    return preset_to_dict(make_preset(tmp_path, model_dir, concept_dir, **sections))


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture
def fake_inputs(tmp_path):
    """A model folder and an image folder that exist (enough for the checks; nothing trains on them)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    return tmp_path / "model", tmp_path / "images"


def run_to_end(path: Path, on_event=None) -> list:
    """Run the queue in this thread as its session's worker does (session.run_job of session.queue_job); returns
    its events. on_event(event, commands) may send commands."""
    commands, events = queue.Queue(), []

    def emit(event):
        events.append(event)
        if on_event:
            on_event(event, commands)
    run_job(queue_job, (str(path),), emit, commands)
    return events


def finished_of(events) -> ev.RunFinished:
    finished = [e for e in events if isinstance(e, ev.RunFinished)]
    assert len(finished) == 1 and events[-1] is finished[0], finished
    return finished[0]


def started_workspaces(events) -> list[str]:
    return [Path(e.workspace).name for e in events if isinstance(e, ev.RunStarted)]


# ---- expansion and naming (no training) ----------------------------------------------------------------------

def test_a_sweep_expands_to_one_named_run_per_combination_each_with_its_own_files(tmp_path, fake_inputs):
    data = base_data(tmp_path, *fake_inputs)
    queue_file = QueueFile([
        QueueEntry("portrait-lr", preset_data=data, set={"training.epochs": 3},
                   sweep={"training.learning_rate": [1e-6, 2e-6], "training.epochs": [5, 10]}),
        QueueEntry("plain", preset_data=data)])
    runs = expand_queue(queue_file, tmp_path)
    names = [run.name for run in runs]
    assert names == ["portrait-lr__learning_rate=1e-06__epochs=5", "portrait-lr__learning_rate=1e-06__epochs=10",
                     "portrait-lr__learning_rate=2e-06__epochs=5", "portrait-lr__learning_rate=2e-06__epochs=10",
                     "plain"]
    assert [(r.preset.training.learning_rate, r.preset.training.epochs) for r in runs[:4]] == [
        (1e-6, 5), (1e-6, 10), (2e-6, 5), (2e-6, 10)]
    assert runs[4].preset.training.epochs == 1 and runs[4].values == {}
    for run in runs:
        assert Path(run.preset.general.workspace_dir) == tmp_path / "ws" / run.name
        assert Path(run.preset.model.output_path) == tmp_path / f"out-{run.name}.safetensors"
        assert run.preset.general.cache_dir == str(tmp_path / "cache")  # shared: the same images cache once
    assert len({r.preset.model.output_path for r in runs}) == len(runs)
    assert runs[0].differences() == ["training.epochs: 1 -> 5", "training.learning_rate: 0.001 -> 1e-06"]
    assert runs[4].differences() == []

    # Every output kind gets the run's name, and a name with dots keeps a real suffix.
    lora = dict(data, model={**data["model"], "output_path": str(tmp_path / "lora.safetensors"),
                             "output_format": "diffusers", "merged_output_path": str(tmp_path / "merged")},
                training={**data["training"], "method": "lora"})
    folder_out = dict(data, model={**data["model"], "output_path": str(tmp_path / "model"),
                                   "output_format": "diffusers"})
    no_suffix = dict(data, model={**data["model"], "output_path": str(tmp_path / "model")})
    beside = dict(data, training={**data["training"], "embedding_placeholder": "sksword"})
    runs = expand_queue(QueueFile([QueueEntry("l", preset_data=lora), QueueEntry("f", preset_data=folder_out),
                                   QueueEntry("n", preset_data=no_suffix, sweep={"training.learning_rate": [2.5e-6]}),
                                   QueueEntry("b", preset_data=beside)]), tmp_path)
    assert Path(runs[0].preset.model.output_path).name == "lora-l.safetensors"
    assert Path(runs[0].preset.model.merged_output_path).name == "merged-l"
    assert Path(runs[1].preset.model.output_path).name == "model-f"
    assert Path(runs[2].preset.model.output_path).name == "model-n__learning_rate=2.5e-06.safetensors"
    # A word trained beside is written next to the output under its own name: the run gets a folder.
    assert Path(runs[3].preset.model.output_path) == tmp_path / "b" / "out.safetensors"


def test_names_are_file_safe_and_tell_paths_apart():
    assert safe_part("odd name/with:bits*") == "odd_name_with_bits"
    long = safe_part("a photo of sks dog, in the style of someone long " * 2)
    assert len(long) <= 48 and long != safe_part("a photo of sks dog, in the style of someone long " * 3)
    assert key_labels(["concepts.0.repeats", "concepts.1.repeats", "training.epochs"]) == {
        "concepts.0.repeats": "0.repeats", "concepts.1.repeats": "1.repeats", "training.epochs": "epochs"}


def test_the_queue_file_round_trips_and_a_newer_version_is_refused(tmp_path, fake_inputs):
    data = base_data(tmp_path, *fake_inputs)
    queue_file = QueueFile([QueueEntry("a", preset="presets/a.json", sweep={"training.epochs": [1, 2]}),
                            QueueEntry("b", preset_data=data, set={"training.learning_rate": 2e-3})])
    write_queue(queue_file, tmp_path / "QUEUE.json")
    assert read_queue(tmp_path / "QUEUE.json") == queue_file
    write_json(tmp_path / "new.json", {"version": 2, "entries": []})
    with pytest.raises(InputError, match="version: this queue is version 2, newer"):
        read_queue(tmp_path / "new.json")


# ---- refusal before anything runs ---------------------------------------------------------------------------

def refusals(data, tmp_path):
    """(entries, the start of the message) per mistake."""
    ok = {"name": "ok", "preset_data": data}
    return [
        ([{"name": "a", "preset": "presets/missing.json"}], "entries[0] 'a' preset: "),
        ([ok, {"name": "portrait-lr", "preset_data": data, "sweep": {"training.learnig_rate": [1e-6]}}],
         "entries[1] 'portrait-lr' sweep training.learnig_rate: unknown key"),
        ([{"name": "a", "preset_data": data, "sweep": {"training.learning_rate": [1e-6, "fast"]}}],
         "entries[0] 'a' sweep training.learning_rate: expected a number, got 'fast'"),
        ([{"name": "a", "preset_data": data, "set": {"training.learning_rate": -1}}],
         "entries[0] 'a' set training.learning_rate: -1.0 is below the minimum 0.0"),
        ([{"name": "a", "preset_data": data, "set": {"concepts.0.path": str(tmp_path / "nowhere")}}],
         f"entries[0] 'a' set concepts.0.path: folder {tmp_path / 'nowhere'} of concept 'colors' does not exist"),
        ([ok, {"name": "ok", "preset_data": data}], "entries[1] 'ok': a second run named 'ok'"),
        ([{"name": "a", "preset_data": data, "sweep": {"training.learning_rate": [1e-6, 1e-06]}}],
         "entries[0] 'a': a second run named 'a__learning_rate=1e-06'"),
        ([{"name": "a", "preset_data": data, "sweep": {"training.epochs": 5}}],
         "entries[0] 'a' sweep training.epochs: expected a non-empty list"),
        ([{"name": "a", "preset": "p.json", "preset_data": data}], "entries[0] 'a' preset: give either"),
        ([], "entries: the queue is empty"),
    ]


def test_mistakes_are_refused_naming_entry_and_field_before_anything_runs(tmp_path, fake_inputs):
    data = base_data(tmp_path, *fake_inputs)
    calls = []
    for number, (entries, message) in enumerate(refusals(data, tmp_path)):
        path = write_json(tmp_path / f"q{number}" / "QUEUE.json", {"version": 1, "entries": entries})
        with pytest.raises(InputError) as caught:
            run_queue(path, lambda event: None, None, lambda *args: calls.append(args))
        assert str(caught.value).startswith(message), (message, str(caught.value))
        assert not state_path(path).exists()
    assert calls == [] and not (tmp_path / "ws").exists()


def test_a_queue_running_already_is_refused(tmp_path, fake_inputs):
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [
        {"name": "a", "preset_data": base_data(tmp_path, *fake_inputs)}]})
    with running_lock(path), pytest.raises(InputError, match="this queue is running already"):
        run_queue(path, lambda event: None, None, lambda *args: None)


def test_a_run_continues_only_in_a_workspace_it_claimed(tmp_path, fake_inputs):
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [
        {"name": "a", "preset_data": base_data(tmp_path, *fake_inputs)}]})
    (run,) = check_queue(path)
    assert how_to_start(run, RunState()) == (None, False)  # new: someone else's files there are refused
    write_run_file(run.workspace, "abc")
    assert how_to_start(run, RunState(status="stopped", run_id="other")) == (None, False)
    assert how_to_start(run, RunState(status="stopped", run_id="abc")) == (None, True)  # no backup: start over
    write_json(run.workspace / "backup" / "step0000001-epoch0001" / MANIFEST, {"step": 1})
    assert how_to_start(run, RunState(status="running", run_id="abc")) == ("latest", False)


def test_clashes_with_earlier_files_are_found_before_anything_runs(tmp_path, fake_inputs):
    from trainer.tools.queue_runner import check_starts, describe_runs
    from trainer.tools.run_queue import QueueState, read_state, run_settings, write_state
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [
        {"name": "a", "preset_data": base_data(tmp_path, *fake_inputs)},
        {"name": "b", "preset_data": base_data(tmp_path, *fake_inputs)}]})
    a, b = check_queue(path)
    trained = []
    write_run_file(b.workspace, "someone-elses")  # a run that this queue did not start
    with pytest.raises(InputError, match=r"run b: its workspace .* holds an earlier run .* rename the entry"):
        run_queue(path, lambda event: None, None, lambda *args: trained.append(args))
    assert trained == [] and not (tmp_path / "QUEUE.state.json").exists()  # refused before run a
    (b.workspace / "run.json").unlink()
    from trainer.train.runs import output_file
    output_file(a.preset).parent.mkdir(parents=True, exist_ok=True)
    output_file(a.preset).write_bytes(b"the user's")
    with pytest.raises(InputError, match="run a: .* exists and this queue did not write it"):
        check_starts([a, b], read_state(path))
    output_file(a.preset).unlink()
    # a run recorded as running while no runner holds the queue was interrupted; a completed run whose settings
    # changed since is said so
    write_state(path, QueueState({"a": RunState(status="completed", settings="0" * 16),
                                  "b": RunState(status="running", settings=run_settings(b))}))
    state = read_state(path)
    assert state.runs["b"].status == "interrupted" and "continues" in state.runs["b"].message
    described = "\n".join(describe_runs([a, b], state))
    assert "a [completed; skipped, though its settings changed since it ran" in described
    with running_lock(path):  # while a runner holds it, running is running
        assert read_state(path).runs["b"].status == "running"


# ---- running ----------------------------------------------------------------------------------------------

def test_a_failing_run_is_recorded_and_the_queue_goes_on(tiny_model_dir, color_concept, tmp_path):
    (tmp_path / "empty").mkdir()
    data = base_data(tmp_path, tiny_model_dir, color_concept)
    empty = base_data(tmp_path, tiny_model_dir, tmp_path / "empty")
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [
        {"name": "empty", "preset_data": empty},
        {"name": "lr", "preset_data": data, "sweep": {"training.learning_rate": [1e-3, 2e-3]}}]})
    events = run_to_end(path)
    finished = finished_of(events)
    assert finished.outcome == "failed" and not finished.bad_input
    assert "2 of 3 runs completed" in finished.message
    records = read_state(path).runs
    assert records["empty"].status == "failed" and "no images" in records["empty"].message
    assert "empty" in finished.message
    names = ["lr__learning_rate=0.001", "lr__learning_rate=0.002"]
    assert started_workspaces(events) == names
    models = []
    for name, lr in zip(names, (1e-3, 2e-3)):
        record = records[name]
        assert record.status == "completed" and isinstance(record.final_loss, float) and record.finished
        assert Path(record.model) == tmp_path / f"out-{name}.safetensors" and Path(record.workspace).name == name
        assert model_metadata(Path(record.model))[RUN_ID_KEY] == record.run_id  # the run the queue recorded
        resolved = json.loads((Path(record.workspace) / "preset.json").read_text())
        assert resolved["training"]["learning_rate"] == lr
        logged = read_event_log(record.workspace)  # each run's own record, its own end, not the queue's
        assert [e.outcome for e in logged if isinstance(e, ev.RunFinished)] == ["completed"]
        models.append(record.model)
        states = [e.status for e in events if isinstance(e, ev.QueueRunState) and e.name == name]
        assert states == ["pending", "running", "completed"]
    from safetensors.torch import load_file
    first, second = (load_file(m) for m in models)
    assert any(not first[k].equal(second[k]) for k in first)  # two trainings, two learning rates


def test_a_stopped_queue_continues_where_it_stopped(tiny_model_dir, color_concept, tmp_path):
    assert Preset().backup.backup_before_save  # a stop writes a backup by default
    data = base_data(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 3})
    entry = {"name": "s", "preset_data": data, "sweep": {"training.learning_rate": [1e-3, 2e-3, 3e-3]}}
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [entry]})
    first, second, third = (f"s__learning_rate={lr}" for lr in ("0.001", "0.002", "0.003"))
    running = []

    def stop_in_second_run(event, commands):
        if isinstance(event, ev.QueueRunState) and event.status == "running":
            running.append(event.name)
        if isinstance(event, ev.Progress) and event.step == 1 and running[-1] == second:
            commands.put(ev.Command(ev.STOP))
    events = run_to_end(path, stop_in_second_run)
    finished = finished_of(events)
    assert finished.outcome == "stopped" and second in finished.message
    records = read_state(path).runs
    assert [records[n].status for n in (first, second, third)] == ["completed", "stopped", "pending"]
    backups = complete_backups(Path(records[second].workspace) / "backup")
    assert [json.loads((b / MANIFEST).read_text())["step"] for b in backups] == [1]

    # The window reorders the entries' sweep: the state follows the runs by name.
    entry["sweep"]["training.learning_rate"] = [3e-3, 1e-3, 2e-3]
    write_json(path, {"version": 1, "entries": [entry]})
    events = run_to_end(path)
    assert finished_of(events).outcome == "completed"
    assert started_workspaces(events) == [third, second]  # the first is not repeated
    steps = [e.step for e in events if isinstance(e, ev.Progress)]
    assert steps == [1, 2, 3, 2, 3]  # the third from the start, the second resumed after its step 1
    assert any(isinstance(e, ev.Log) and e.text.startswith("Resumed from") for e in events)
    records = read_state(path).runs
    assert all(records[n].status == "completed" for n in (first, second, third))
    assert Path(records[second].model).is_file()


def test_pause_after_the_current_run_and_a_queue_file_changed_between_runs(tiny_model_dir, color_concept,
                                                                             tmp_path):
    data = base_data(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 1})
    r0, r1, r2 = ({"name": name, "preset_data": data} for name in ("r0", "r1", "r2"))
    path = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [r1, r2]})

    def window_edits_during_first_run(event, commands):
        if isinstance(event, ev.RunStarted) and Path(event.workspace).name == "r1":
            set_pause(path)
            write_queue(QueueFile([QueueEntry(**r) for r in (r0, r1, r2)]), path)
    events = run_to_end(path, window_edits_during_first_run)
    finished = finished_of(events)
    assert finished.outcome == "stopped" and "paused after run r1" in finished.message
    assert started_workspaces(events) == ["r1"]
    state = read_state(path)
    assert {name: r.status for name, r in state.runs.items()} == {"r1": "completed", "r2": "pending", "r0": "pending"}
    assert not state.pause_after_current  # honoured, so cleared
    assert any(isinstance(e, ev.QueueRunState) and e.name == "r0" for e in events)

    events = run_to_end(path)
    assert finished_of(events).outcome == "completed"
    assert started_workspaces(events) == ["r0", "r2"]


# ---- the command line -----------------------------------------------------------------------------------------

def test_queue_dry_run_and_exit_codes(tmp_path, fake_inputs):
    data = base_data(tmp_path, *fake_inputs)
    write_json(tmp_path / "presets" / "p.json", data)
    good = write_json(tmp_path / "QUEUE.json", {"version": 1, "entries": [
        {"name": "lr", "preset": "presets/p.json", "sweep": {"training.learning_rate": [1e-3, 2e-3]}}]})
    bad = write_json(tmp_path / "bad.json", {"version": 1, "entries": [
        {"name": "a", "preset": "presets/p.json", "sweep": {"training.learnig_rate": [1e-3]}}]})

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trainer", "queue", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    done = cli(good, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"workspace: {tmp_path / 'ws' / 'lr__learning_rate=0.002'}" in done.stdout
    assert "training.learning_rate: 0.001 -> 0.002" in done.stdout
    assert "lr__learning_rate=0.001 [pending; starts]" in done.stdout
    assert not (tmp_path / "ws").exists() and not state_path(good).exists()
    for args in ((bad, "--dry-run"), (bad,)):
        done = cli(*args)
        assert done.returncode == 2
        assert "error: entries[0] 'a' sweep training.learnig_rate: unknown key" in done.stderr
