"""Each optimizer's own settings in the training tab's Optimizer group: shown when that optimizer is chosen and
hidden for the others (config.OPTIMIZER_FIELDS, what trainer.train.optim passes to each), a setting with a problem
stays in sight, a refusal (a schedule-free optimizer with a decaying schedule) marks the field it names."""
from __future__ import annotations

from gui_helpers import screenshot, type_into

from app.widgets import ERROR
from trainer.config import OPTIMIZER_FIELDS, OPTIMIZERS


def labelled(window, path: str):
    return next(b.labelled for b in window.form.bindings_for(path) if b.labelled is not None)


def shown(window, path: str) -> bool:
    """The field's label and widget are gridded in its group, and the group is packed in its column."""
    field = labelled(window, path)
    return (field.label.winfo_manager() == "grid" and field.widget.winfo_manager() == "grid"
            and field.label.master.winfo_manager() == "pack")


def choose(window, field: str, value: str) -> None:
    window.form.widget_for(f"training.{field}").set(value)
    window.update()
    assert getattr(window.preset.training, field) == value


def test_each_optimizer_shows_its_own_settings_and_no_others(window):
    for optimizer in (*OPTIMIZERS, "adamw"):
        choose(window, "optimizer", optimizer)
        for name, readers in OPTIMIZER_FIELDS.items():
            assert shown(window, f"training.{name}") == (optimizer in readers), (optimizer, name)
        for common in ("optimizer", "learning_rate", "weight_decay", "max_grad_norm"):
            assert shown(window, f"training.{common}"), (optimizer, common)
    choose(window, "method", "embedding")  # the method's rule still holds beside the optimizer's
    choose(window, "optimizer", "prodigy")
    assert shown(window, "training.prodigy_d_coef") and not shown(window, "training.learning_rate")
    choose(window, "method", "full")


def test_a_setting_with_a_problem_stays_in_sight(window):
    choose(window, "optimizer", "prodigy")
    type_into(window.form.widget_for("training.prodigy_d_coef"), "much")  # text that does not parse
    window.update()
    choose(window, "optimizer", "adamw")
    assert shown(window, "training.prodigy_d_coef") and not shown(window, "training.prodigy_d0")
    type_into(window.form.widget_for("training.prodigy_d_coef"), "0.5")
    window.update()
    choose(window, "optimizer", "came")
    assert not shown(window, "training.prodigy_d_coef")

    type_into(window.form.widget_for("training.betas"), "0.9,0.999")  # came takes three
    window.update()
    window.validate_now()
    binding = window.form.bindings_for("training.betas")[0]
    assert "came takes 3" in binding.reason and binding.widget.cget("border_color") == ERROR
    choose(window, "optimizer", "adopt")  # two are right for adopt
    window.validate_now()
    assert binding.reason is None

    choose(window, "optimizer", "adamw_schedulefree")
    choose(window, "lr_scheduler", "cosine")
    window.validate_now()
    assert "adamw_schedulefree needs constant" in window.form.bindings_for("training.lr_scheduler")[0].reason


def test_screenshots_of_the_optimizer_group(window, pump, screenshots):
    window.tabview.set("training")
    frame = window.tabview.tab("training")
    for optimizer in ("prodigy_schedulefree", "ademamix"):
        choose(window, "optimizer", optimizer)
        shot = screenshot(window, pump, screenshots, f"optimizer_{optimizer}")
        for name, readers in OPTIMIZER_FIELDS.items():
            if optimizer in readers:
                label = labelled(window, f"training.{name}").label
                assert shot.inside(label, frame), f"{optimizer}: {name} is not in view"
                assert shot.colours(label) > 4, f"{optimizer}: {name}'s label is blank"


def test_the_huber_and_logit_settings_show_for_the_choices_that_read_them(window):
    for loss_type, huber in [("huber", True), ("mse", False), ("smooth_l1", True), ("l1", False)]:
        choose(window, "loss_type", loss_type)
        assert shown(window, "training.huber_c") == shown(window, "training.huber_schedule") == huber, loss_type
        assert shown(window, "training.loss_type") and shown(window, "training.min_timestep")
    for distribution, logit in [("logit_normal", True), ("uniform", False)]:
        choose(window, "timestep_distribution", distribution)
        assert shown(window, "training.timestep_logit_mean") == shown(window, "training.timestep_logit_std") == logit
        assert shown(window, "training.min_timestep") and shown(window, "training.max_timestep")
