"""A fake session's events drive the bars, chart, gallery, log and buttons; stop, failure, closing mid-run."""
from __future__ import annotations

import pytest
from PIL import Image

from app.widgets import WARNING
from trainer import events as ev


def progress(step, total=20, loss=0.5, lr=1e-4, epoch=0, vram=None):
    return ev.Progress(step=step, total_steps=total, epoch=epoch, total_epochs=2, epoch_step=step % 10 or 10,
                       epoch_steps=10, loss=loss, smooth_loss=loss * 0.9, lr=lr, it_per_s=4.0, eta_s=95.0,
                       vram_gib=vram)


def sample(tmp_path, index, step, colour="red"):
    path = tmp_path / f"sample-{index}-{step}.png"
    Image.new("RGB", (64, 64), colour).save(path)
    return ev.SampleReady(str(path), index, f"prompt {index}", step, 0)


@pytest.fixture
def running(window, sessions, pump):
    assert window.start()
    session = sessions[-1]
    yield window, session
    if window.runner.running:
        window.runner.session.finish("stopped")
        pump(window)


def test_start_hands_a_copy_of_the_preset_to_the_session(running):
    window, session = running
    assert session.started
    assert session.preset == window.preset and session.preset is not window.preset
    assert session.preset.concepts is not window.preset.concepts
    assert window.bottom.start_button.cget("text") == "Stop"
    assert all(b.cget("state") == "normal" for b in window.bottom.command_buttons.values())
    assert window.tabview.get() == "run"


def test_events_update_bars_chart_gallery_log_and_buttons(running, tmp_path, pump):
    window, session = running
    q = session.events
    q.put(ev.RunStarted("ws", total_steps=20, total_epochs=2, device="cpu"))
    q.put(ev.Status("caching latents"))
    q.put(sample(tmp_path, 0, 0))
    for step in range(1, 16):
        q.put(progress(step, loss=1.0 / step, epoch=step // 10, vram=3.25))
    q.put(sample(tmp_path, 0, 10, "blue"))
    q.put(sample(tmp_path, 1, 10, "green"))
    q.put(ev.Log("warning", "caption missing for 2 images"))
    q.put(ev.Log("info", "all good"))
    q.put(ev.CheckpointWritten("backup", "ws/backup-15", 15))
    pump(window, 0.4)  # the chart redraws at most every 250 ms
    bottom = window.bottom
    assert bottom.step_bar.get() == pytest.approx(15 / 20)
    assert bottom.step_label.cget("text") == "step 15/20"
    assert bottom.epoch_label.cget("text") == "epoch 2/2"
    assert bottom.epoch_bar.get() == pytest.approx((1 + 5 / 10) / 2)
    assert bottom.speed_label.cget("text") == "4.00 it/s"
    assert bottom.eta_label.cget("text").startswith("1:35 left · done ≈ ")  # time left, and the clock time
    assert bottom.vram_label.cget("text") == "VRAM 3.2 GiB"
    chart = window.run_tab.chart
    assert chart.steps == list(range(1, 16)) and chart.loss[-1] == pytest.approx(1 / 15)
    assert chart.find_all(), "the chart drew nothing"
    gallery = window.run_tab.gallery
    assert {p: s.step for p, s in gallery.shown.items()} == {0: 10, 1: 10}
    assert gallery.cards[0][0].cget("image") and "step 10" in gallery.cards[0][1].cget("text")
    log = window.run_tab.log
    assert "caption missing" in log.text() and "backup-15" in log.text()
    start, end = log.tag_ranges("warning")[:2]
    assert "caption missing" in log.get(start, end)
    assert log.tag_cget("warning", "foreground") == WARNING
    session.finish("completed", step=20, output_path="ws/model.safetensors")
    pump(window)
    assert not window.runner.running
    assert bottom.start_button.cget("text") == "Start" and bottom.start_button.cget("state") == "normal"
    assert all(b.cget("state") == "disabled" for b in bottom.command_buttons.values())
    assert "completed" in bottom.message.cget("text") and "ws/model.safetensors" in bottom.message.cget("text")
    assert bottom.speed_label.cget("text") == "– it/s" and bottom.eta_label.cget("text") == "time left –"
    assert bottom.step_label.cget("text") == "step 15/20"  # where it ended stays


def test_gallery_browses_earlier_steps_and_opens_full_size(running, tmp_path, pump):
    window, session = running
    for step, colour in ((5, "red"), (10, "blue"), (15, "green")):
        session.events.put(sample(tmp_path, 0, step, colour))
    pump(window)
    gallery = window.run_tab.gallery
    assert gallery.shown[0].step == 15
    gallery.show_step(0)
    assert gallery.shown[0].step == 5 and "step 5" in gallery.step_label.cget("text")
    session.events.put(sample(tmp_path, 0, 20))
    pump(window)
    assert gallery.shown[0].step == 5  # looking back: a new sample does not pull the view forward
    gallery.show_step(len(gallery.steps) - 1)
    assert gallery.shown[0].step == 20
    top = gallery.open_full(0)
    window.update()
    assert top is not None and top.winfo_exists() and "step 20" in top.title()
    top.close()


def test_commands_reach_the_session(running, pump):
    window, session = running
    for name, button in window.bottom.command_buttons.items():
        button.invoke()
        assert "taken after the next training step" in window.bottom.message_line.text  # said, not silent
    assert session.sent == [ev.SAMPLE_NOW, ev.BACKUP_NOW, ev.SAVE_NOW]
    assert window.bottom.message_line.text.startswith("A save asked for")
    session.events.put(progress(4))
    pump(window)
    assert window.bottom.eta_label.cget("text").startswith("1:35 left")
    session.send = session.sent.append  # the session stops a step later: one more Progress comes first
    window.bottom.start_button.invoke()  # Stop
    assert session.sent[-1] == ev.STOP
    assert window.bottom.start_button.cget("text") == "Stopping…"
    bottom = window.bottom
    assert bottom.eta_label.cget("text") == "time left –" and bottom.speed_label.cget("text") == "– it/s"
    session.events.put(progress(5))
    pump(window)
    assert window.bottom.step_label.cget("text") == "step 5/20"
    assert window.bottom.eta_label.cget("text") == "time left –"  # stopping: no time left to show
    session.finish("stopped", step=3)
    pump(window)
    assert not window.runner.running and "stopped at step 3" in window.bottom.message.cget("text")


def test_failed_run_shows_its_message_and_a_second_run_works(running, sessions, pump):
    window, session = running
    session.events.put(ev.Log("error", "Traceback: boom"))
    session.finish("failed", "Out of GPU memory: try a smaller batch size.")
    pump(window)
    message = window.bottom.message
    assert "Out of GPU memory" in message.cget("text") and message.winfo_ismapped()
    assert "Out of GPU memory" in window.run_tab.log.text()
    assert window.bottom.start_button.cget("state") == "normal"
    assert window.start()
    second = sessions[-1]
    assert second is not session
    second.events.put(progress(1))
    pump(window)
    assert window.run_tab.chart.steps == [1]  # the second run starts with a clean chart
    assert message.cget("text") == ""


def test_a_worker_that_dies_silently_is_reported(running, pump):
    window, session = running
    session.finished = True  # thread gone, no RunFinished
    pump(window)
    assert not window.runner.running
    assert "without reporting a result" in window.bottom.message.cget("text")


def test_a_burst_of_events_is_drained_in_slices(running, pump):
    window, session = running
    for step in range(1, 3001):
        session.events.put(progress(step, total=3000))
    more = window.runner.drain()
    assert more and 0 < len(window.run_tab.chart.steps) <= window.runner.MAX_EVENTS
    pump(window, 1.5)
    assert len(window.run_tab.chart.steps) == 3000


def test_closing_during_a_run_asks_then_stops_then_closes(make_window, sessions, pump):
    window = make_window()
    assert window.start()
    session = sessions[-1]
    window.dialogs.confirm_answer = False
    window.on_close()
    assert not window.closed and window.runner.running and session.sent == []
    window.dialogs.confirm_answer = True
    window.on_close()
    assert window.dialogs.asked[-1][1] == "Stop training?"
    assert session.sent == [ev.STOP]
    pump(window, 0.3)
    assert window.closed


def test_closing_with_unsaved_changes_asks(make_window):
    window = make_window()
    window.finish_building()  # the training tab may not be built yet (the window builds tabs a slice per tick)
    window.form.widget_for("training.epochs").insert(0, "1")
    window.update()
    window.dialogs.confirm_answer = False
    window.on_close()
    assert not window.closed and window.dialogs.asked[-1][1] == "Unsaved changes"
    window.dialogs.confirm_answer = True
    window.on_close()
    assert window.closed
