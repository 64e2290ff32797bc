"""The run's record (WORKSPACE/events.jsonl): what a training reported, read back as the same events."""
from __future__ import annotations

import json
from pathlib import Path

from test_real_inputs import session_run  # through a TrainingSession, as the CLI and the window run it
from tiny_presets import make_preset
from trainer import events as ev
from trainer.event_log import EVENT_LOG, EventRecorder, read_event_log


def quick(tmp_path, tiny_model_dir, color_concept, **training):
    return make_preset(tmp_path, tiny_model_dir, color_concept, training={"max_steps": 3, "batch_size": 2, **training},
                       sampling={"unit": "steps", "every": 2,
                                 "prompts": [{"prompt": "red", "width": 32, "height": 32, "steps": 2}]},
                       backup={"backup_unit": "never"})


def test_a_run_leaves_its_events_in_the_workspace_and_they_read_back_the_same(tiny_model_dir, color_concept,
                                                                             tmp_path):
    preset = quick(tmp_path, tiny_model_dir, color_concept)
    finished, events = session_run(preset)
    assert finished.outcome == "completed", finished.message
    recorded = read_event_log(preset.general.workspace_dir)
    kinds = (ev.RunStarted, ev.Progress, ev.SampleReady, ev.CheckpointWritten, ev.Log, ev.RunFinished)
    assert recorded == [e for e in events if isinstance(e, kinds)]  # every one, in order, equal field by field
    assert [e.step for e in recorded if isinstance(e, ev.Progress)] == [1, 2, 3]
    assert isinstance(recorded[-1], ev.RunFinished) and recorded[-1].outcome == "completed"
    assert any(isinstance(e, ev.Log) for e in recorded[:recorded.index(next(
        e for e in recorded if isinstance(e, ev.RunStarted)))])  # the input checks' lines, held until the start

    second, _ = session_run(preset, resume=None, fresh=True)  # starting over moves the record aside with the run
    assert second.outcome == "completed"
    assert [type(e) for e in read_event_log(preset.general.workspace_dir)].count(ev.RunStarted) == 1
    assert list((Path(preset.general.workspace_dir) / "earlier").glob(f"*/{EVENT_LOG}"))


def test_a_refused_run_records_nothing_and_keeps_the_last_record(tiny_model_dir, color_concept, tmp_path):
    preset = quick(tmp_path, tiny_model_dir, color_concept)
    session_run(preset)
    before = (Path(preset.general.workspace_dir) / EVENT_LOG).read_bytes()
    preset.training.learning_rate = -1.0  # refused before anything starts
    finished, _ = session_run(preset, fresh=True)
    assert finished.outcome == "failed" and finished.bad_input
    assert (Path(preset.general.workspace_dir) / EVENT_LOG).read_bytes() == before


def test_unreadable_lines_are_skipped_and_a_record_that_cannot_be_written_is_given_up(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    good = ev.Log("info", "hello")
    (workspace / EVENT_LOG).write_text(json.dumps({"event": "Log", "level": "info", "text": "hello"}) + "\n"
                                       + '{"event": "Progress", "step": 1\n' + '{"event": "Nope"}\n' + "x\n")
    assert read_event_log(workspace) == [good]
    assert read_event_log(tmp_path / "nowhere") == []

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    seen = []
    record = EventRecorder(seen.append)
    record(ev.Log("info", "before"))
    record(ev.RunStarted(str(blocked), 3, 1, "cpu"))  # a workspace where a file is: nothing can be written
    record(ev.Progress(1, 3, 0, 1, 1, 3, 0.5, 0.5, 1e-4, 1.0, 2.0))
    assert seen[:2] == [ev.Log("info", "before"), ev.RunStarted(str(blocked), 3, 1, "cpu")]
    warnings = [e for e in seen if isinstance(e, ev.Log) and e.level == "warning"]
    assert len(warnings) == 1 and "events.jsonl" in warnings[0].text
    assert isinstance(seen[-1], ev.Progress)  # every event still goes on
