"""The window shows the last run recorded in its workspace (events.jsonl): loss curve, samples and log, after the
first paint and a slice at a time; a resumed run's steps trained twice show once (the later); a preset with
another workspace shows that workspace's run; a new run replaces what was shown."""
from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import screenshot
from PIL import Image, ImageDraw

from app.tabs.run import RunTab
from trainer import events as ev
from trainer.config import Preset, load_preset
from trainer.event_log import EventRecorder, read_event_log


def sample(workspace: Path, index: int, step: int, epoch: int) -> ev.SampleReady:
    path = workspace / "samples" / f"step{step:07d}-epoch{epoch:04d}-prompt{index:02d}-seed{index + 1}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), "white")
    r = 8 + step // 2
    ImageDraw.Draw(image).ellipse((32 - r, 32 - r, 32 + r, 32 + r), fill=("red", "blue")[index])
    image.save(path)
    return ev.SampleReady(str(path), index, ("a red circle", "a blue circle")[index], step, epoch)


def progress(step: int, loss: float, total: int = 20) -> ev.Progress:
    return ev.Progress(step, total, (step - 1) // 10, 2, (step - 1) % 10 + 1, 10, loss, loss, 1e-4, 2.0, 10.0)


def record_resumed_run(workspace: Path) -> None:
    """A run of 20 steps stopped at step 12 after a backup at step 6, then resumed from that backup: steps 7-12
    are trained twice (the second time with loss 0.2 instead of 1.0). Prompt 1's sample at step 0 is deleted."""
    record = EventRecorder(lambda event: None)
    record(ev.Log("info", "Checked 6 images"))
    record(ev.RunStarted(str(workspace), 20, 2, "cpu"))
    for index in range(2):
        record(sample(workspace, index, 0, 0))
    for step in range(1, 13):
        record(progress(step, 1.0))
        if step == 6:
            record(ev.CheckpointWritten("backup", str(workspace / "backup" / "step-6"), 6))
        if step == 10:
            record(sample(workspace, 0, 10, 1))
    record(ev.RunFinished("stopped", step=12))
    record(ev.RunStarted(str(workspace), 20, 2, "cpu"))
    for step in range(7, 21):
        record(progress(step, 0.2))
        if step in (10, 20):
            for index in range(2):
                record(sample(workspace, index, step, 1 if step == 10 else 2))
    record(ev.Log("warning", "3 images have no caption"))
    record(ev.RunFinished("completed", output_path=str(workspace / "model.safetensors"), step=20))
    Path(sample(workspace, 1, 0, 0).path).unlink()


def replayed(window) -> bool:
    return window.run_tab._replay_id is None


@pytest.fixture
def new_window(gui_display, fake_session, tmp_path):
    """Opens a window on a preset whose workspace is tmp_path/workspace; closes it after the test."""
    from app.recent import DEFAULT_PRESET, RecentFiles
    from app.window import Window
    made = []

    def open_window(lazy: bool = False) -> Window:
        preset = load_preset(DEFAULT_PRESET) if DEFAULT_PRESET.exists() else Preset()  # as the window fixture
        preset.general.workspace_dir = str(tmp_path / "workspace")
        preset.model.output_path = str(tmp_path / "workspace" / "model.safetensors")
        made.append(Window(preset=preset, session_factory=fake_session, recent=RecentFiles(tmp_path / "r.json"),
                           lazy=lazy))
        return made[-1]
    yield open_window
    for window in made:
        if window.runner.session is not None:
            window.runner.session.finish("stopped")
        window.close_now()


def test_a_new_window_shows_the_last_run_of_its_workspace(new_window, tmp_path, pump, wait_for, screenshots):
    workspace = tmp_path / "workspace"
    record_resumed_run(workspace)
    window = new_window()
    tab: RunTab = window.run_tab
    assert tab.chart.steps == [] and tab.log.text() == "", "the record was read before the window's first paint"
    wait_for(window, lambda: replayed(window) and tab.chart.steps, "the record's replay")
    pump(window, 0.3)
    assert tab.chart.steps == list(range(1, 21))
    assert tab.chart.loss == [1.0] * 6 + [0.2] * 14, "a resumed run's steps show the later training"
    assert tab.chart.total_steps == 20
    gallery = tab.gallery
    assert sorted((s.prompt_index, s.step) for s in gallery.samples) == [(0, 0), (0, 10), (0, 20), (1, 10), (1, 20)]
    assert {p: s.step for p, s in gallery.shown.items()} == {0: 20, 1: 20}
    text = tab.log.text()
    for line in ("Checked 6 images", "Run started on cpu: 20 steps", "Backup written at step 6",
                 "Training stopped at step 12", "3 images have no caption", "Training completed at step 20"):
        assert line in text, line
    assert window.bottom.start_button.cget("text") == "Start" and not window.runner.running
    window.tabview.set("run")
    shot = screenshot(window, pump, screenshots, "reload_run")
    assert shot.count(tab.chart, "#58a6ff", 12) > 100, "the replayed loss curve is not drawn"
    assert shot.count(gallery.cards[0][0], "red", 30) > 1000 and shot.count(gallery.rows[1].strip, "blue", 30) > 200
    assert shot.colours(tab.log) > 10

    assert window.start(fresh=True)  # a new run's first event replaces the replayed run
    session = window.runner.session
    session.events.put(ev.RunStarted(str(workspace), 5, 1, "cpu"))
    session.events.put(progress(1, 0.5, total=5))
    pump(window)
    assert tab.chart.steps == [1] and gallery.samples == [] and "completed at step 20" not in tab.log.text()


def test_the_replay_goes_a_slice_at_a_time_and_a_run_stops_it(window, pump, wait_for, monkeypatch):
    workspace = Path(window.preset.general.workspace_dir)
    record = EventRecorder(lambda event: None)
    record(ev.RunStarted(str(workspace), 6000, 2, "cpu"))
    for step in range(1, 6001):
        record(progress(step, 1.0 / step, total=6000))
    record(ev.RunFinished("stopped", step=6000))
    assert len(read_event_log(workspace)) == 6002
    tab = window.run_tab
    assert tab.show_record()
    wait_for(window, lambda: replayed(window), "the record's replay", timeout_s=30)
    assert tab.chart.steps == list(range(1, 6001)) and "stopped at step 6000" in tab.log.text()

    monkeypatch.setattr("app.tabs.run.REPLAY_BUDGET_S", 0.0)  # one event per Tk tick
    assert tab.show_record()
    assert not replayed(window) and tab.chart.steps == [], "more than one event was replayed in the first tick"
    pump(window, 0.1)
    assert 0 < len(tab.chart.steps) < 6000
    assert window.start()  # a run started mid-replay: the replay stops, the run's events replace it
    wait_for(window, lambda: replayed(window), "the replay's end", timeout_s=30)
    assert tab.log.text() == "" and len(tab.chart.steps) < 6000, "the replay went on after Start"
    window.runner.session.events.put(ev.Progress(1, 10, 0, 1, 1, 10, 0.5, 0.5, 1e-4, 1.0, 9.0))
    pump(window)
    assert tab.chart.steps == [1], "the replayed points stayed when the run drew"
    window.runner.session.finish("stopped", step=1)
    pump(window)


def test_a_preset_with_another_workspace_shows_its_run_unless_one_is_going(window, tmp_path, wait_for, pump):
    tab = window.run_tab
    other = tmp_path / "other"
    record = EventRecorder(lambda event: None)
    record(ev.RunStarted(str(other), 3, 1, "cpu"))
    for step in (1, 2, 3):
        record(progress(step, 0.3, total=3))
    record(ev.RunFinished("completed", step=3))
    preset = window.preset
    preset.general.workspace_dir = str(other)
    window.set_preset(preset, window.preset_path)
    wait_for(window, lambda: replayed(window) and tab.chart.steps == [1, 2, 3], "the other workspace's run")
    assert "Training completed at step 3" in tab.log.text()

    preset.general.workspace_dir = str(tmp_path / "empty")  # no record there: nothing to show
    window.set_preset(preset, window.preset_path)
    pump(window)
    assert tab.chart.steps == [] and tab.log.text() == ""

    assert window.start()
    window.runner.session.events.put(progress(1, 0.7))
    pump(window)
    preset.general.workspace_dir = str(other)  # while a run is going its views stay
    window.set_preset(preset, window.preset_path)
    pump(window)
    assert tab.chart.steps == [1] and tab.chart.loss == [0.7]
    window.runner.session.finish("stopped", step=1)
    pump(window)


def test_a_window_closed_before_its_run_tab_is_built_closes(new_window):
    window = new_window(lazy=True)  # the tabs are built a slice per Tk tick after the first paint
    assert "run" not in window._built
    window.close_now()
    assert window.closed


def test_a_resumed_run_goes_on_drawing_the_run_it_continues(window, pump):
    """Start with resume: the run tab shows the recorded run's loss curve and samples up to the backup, and the
    resumed run's steps continue them (the steps it trains again replace the recorded ones)."""
    workspace = Path(window.preset.general.workspace_dir)
    record = EventRecorder(lambda event: None)
    record(ev.RunStarted(str(workspace), 20, 2, "cpu"))
    for step in range(1, 11):
        record(progress(step, 1.0))
    record(sample(workspace, 0, 10, 0))
    record(ev.RunFinished("stopped", step=10))
    tab, gallery = window.run_tab, window.run_tab.gallery
    assert window.start(resume="latest")
    assert tab.chart.steps == list(range(1, 11)) and [s.step for s in gallery.samples] == [10]
    session = window.runner.session
    session.events.put(ev.RunStarted(str(workspace), 20, 2, "cpu"))
    for step in (9, 10, 11):  # resumed from a backup at step 8
        session.events.put(progress(step, 0.2))
    session.events.put(sample(workspace, 0, 10, 0))
    pump(window)
    assert tab.chart.steps == list(range(1, 12)) and tab.chart.loss[-3:] == [0.2, 0.2, 0.2]
    assert [s.step for s in gallery.samples] == [10] and tab.log.text().startswith("Run started on cpu")
    session.finish("stopped", step=11)
    pump(window)
    assert window.start(fresh=True)  # starting over draws a new picture
    window.runner.session.events.put(ev.RunStarted(str(workspace), 5, 1, "cpu"))
    window.runner.session.events.put(progress(1, 0.5, total=5))
    pump(window)
    assert tab.chart.steps == [1] and gallery.samples == []
    window.runner.session.finish("stopped", step=1)
