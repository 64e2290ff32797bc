"""Sessions in a child process (what the window uses): events arrive, stop works, a crash still ends the run
with one RunFinished that says what happened."""
from __future__ import annotations

import time

from tiny_presets import make_preset

from trainer import events as ev
from trainer.session import TrainingSession


def collect(session, timeout=240, on_event=None):
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = session.events.get(timeout=deadline - time.monotonic())
        events.append(event)
        if on_event:
            on_event(event)
        if isinstance(event, ev.RunFinished):
            return events
    raise AssertionError(f"no RunFinished within {timeout} s: {events[-5:]}")


def test_training_in_a_child_process_reports_and_stops(tiny_model_dir, color_concept, tmp_path):
    preset = make_preset(tmp_path, tiny_model_dir, color_concept, training={"epochs": 50})
    session = TrainingSession(preset, process=True)
    session.start()
    seen = []

    def stop_after_two(event):
        if isinstance(event, ev.Progress):
            seen.append(event.step)
            if len(seen) == 2:
                session.stop()
    events = collect(session, on_event=stop_after_two)
    assert session.join(60)
    finished = [e for e in events if isinstance(e, ev.RunFinished)]
    assert len(finished) == 1 and finished[0].outcome == "stopped", finished
    assert any(isinstance(e, ev.RunStarted) for e in events)
    assert 2 <= finished[0].step < 100
    assert (tmp_path / "out.safetensors").exists()


def test_bad_input_and_a_killed_worker_each_end_with_one_failure(tiny_model_dir, color_concept, tmp_path):
    bad = make_preset(tmp_path / "bad", tmp_path / "no-model", color_concept)
    session = TrainingSession(bad, process=True)
    session.start()
    finished = [e for e in collect(session) if isinstance(e, ev.RunFinished)]
    assert len(finished) == 1 and finished[0].outcome == "failed" and finished[0].bad_input
    assert "no-model" in finished[0].message

    preset = make_preset(tmp_path / "kill", tiny_model_dir, color_concept, training={"epochs": 500})
    session = TrainingSession(preset, process=True)
    session.start()

    def kill_when_training(event):
        if isinstance(event, ev.Progress):
            session.kill()
    events = collect(session, on_event=kill_when_training)
    finished = [e for e in events if isinstance(e, ev.RunFinished)]
    assert len(finished) == 1 and finished[0].outcome == "failed"
    assert "ended unexpectedly" in finished[0].message
    assert session.join(30)
