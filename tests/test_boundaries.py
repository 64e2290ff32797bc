"""What is due at step and epoch boundaries (intervals.Boundaries), and the epoch number everything is named by."""
from __future__ import annotations

from trainer import events as ev
from trainer.config import preset_from_dict
from trainer.train.backup import Position
from trainer.train.intervals import Actions, Boundaries


def boundaries(total_steps=10, **backup):
    preset = preset_from_dict({"version": 1, "sampling": {"unit": "steps", "every": 3},
                               "backup": {"backup_unit": "steps", "backup_every": 5, **backup}})
    return Boundaries(preset, total_steps)


def test_steps_due_by_interval_and_no_backup_after_the_last_step():
    due = boundaries()
    assert due.after_step(3) == Actions(sample=True)
    assert due.after_step(5) == Actions(backup=True)
    assert due.after_step(7) == Actions()
    assert due.after_step(10) == Actions(backup=False)  # the end of the run writes its own backup
    assert due.after_epoch(1, step=4) == Actions()  # step units: nothing per epoch


def test_commands_add_to_what_is_due_and_save_now_works_beside_a_skipped_periodic_save():
    due = boundaries(save_unit="steps", save_every=2, save_skip_first=1)
    first = due.after_step(2)  # the first periodic save is skipped...
    assert first == Actions()
    assert due.with_commands(first, {ev.SAVE_NOW}, 2) == Actions(save=True)  # ...but Save now still saves
    assert due.after_step(4) == Actions(save=True)  # the second periodic save is written
    asked = due.with_commands(Actions(), {ev.SAMPLE_NOW, ev.BACKUP_NOW}, 6)
    assert asked == Actions(sample=True, backup=True)
    assert due.with_commands(Actions(), {ev.BACKUP_NOW}, 10) == Actions()  # not after the last step


def test_epoch_units_are_due_after_whole_epochs_only_before_the_end():
    preset = preset_from_dict({"version": 1, "sampling": {"unit": "epochs", "every": 2},
                               "backup": {"backup_unit": "epochs", "backup_every": 1}})
    due = Boundaries(preset, 12)
    assert due.after_step(4) == Actions()
    assert due.after_epoch(1, step=4) == Actions(backup=True)
    assert due.after_epoch(2, step=8) == Actions(sample=True, backup=True)
    assert due.after_epoch(3, step=12) == Actions()  # the run is over: the end writes what it writes


def test_epoch_number_counts_the_epoch_of_the_last_step_from_1():
    assert Position(0, 0, 0).epoch_number == 0  # before training
    assert Position(1, 0, 1).epoch_number == 1  # inside the first epoch
    assert Position(4, 1, 0).epoch_number == 1  # after its last step
    assert Position(5, 1, 1).epoch_number == 2
