"""The runners pump a session's events to the views that subscribed, without a window: order, the newest-per-drain
hook, the end of a run, a worker that dies silently, a session that cannot start."""
from __future__ import annotations

import pytest

from app.runner import Runner
from app.tool_runner import ToolRunner
from trainer import events as ev


def test_every_view_sees_each_event_in_order_then_the_window_the_finish(fake_session):
    seen = []
    runner = Runner(fake_session, lambda e: seen.append(("finished", e.outcome, runner.running)))
    runner.subscribe(lambda e: seen.append(("a", type(e).__name__, runner.running)), lambda: seen.append(("a",)))
    runner.subscribe(lambda e: seen.append(("b", type(e).__name__)))
    runner.start(object(), resume="latest")
    assert runner.running and runner.options == {"resume": "latest"} and runner.session.resume == "latest"
    runner.session.events.put(ev.Status("training"))
    runner.session.finish("completed", step=4)
    assert runner.drain() is False
    assert seen == [("a", "Status", True), ("b", "Status"), ("a", "RunFinished", False), ("b", "RunFinished"),
                    ("finished", "completed", False), ("a",)]
    assert runner.last_finished.outcome == "completed" and runner.drain() is False


def test_a_worker_that_ends_without_its_run_finished_is_reported_once(fake_session):
    finished = []
    runner = Runner(fake_session, finished.append, what="data generation job")
    runner.start(object())
    runner.session.finished = True  # the worker is gone and sent nothing
    runner.drain()
    assert [(e.outcome, e.message) for e in finished] == [
        ("failed", "the data generation job ended without reporting a result")]
    assert not runner.running and runner.drain() is False and len(finished) == 1


def test_a_session_that_cannot_start_leaves_no_run(fake_session):
    class Broken(fake_session):
        def start(self):
            raise OSError("no worker")

    runner = Runner(Broken)
    with pytest.raises(OSError):
        runner.start(object())
    assert not runner.running
    said = []
    assert not runner.started(object(), lambda text, level: said.append((text, level)))  # a window's way: said
    assert said == [("Could not start: no worker", "error")] and not runner.running
    runner.session_factory = fake_session
    runner.start(object())
    with pytest.raises(RuntimeError, match="already going"):
        runner.start(object())


def test_a_tool_runner_knows_whether_its_job_holds_the_device(fake_session):
    runner = ToolRunner("Data generation", fake_session, lambda e: None, lambda spec: spec == "model")
    runner.start("samples")
    assert runner.running and not runner.using_device and runner.what == "data generation job"
    runner.stop()
    runner.drain()
    assert not runner.running and runner.last_finished.outcome == "stopped"
    runner.start("model")
    assert runner.using_device
