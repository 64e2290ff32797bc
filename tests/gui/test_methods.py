"""training.method in the window: the training tab's Method group comes first; the LoRA and model-tab LoRA fields
show for method lora only; method embedding hides what it does not train or write; a field with a problem is never
hidden; the built-in LoRA and embedding presets show their sections; a placeholder CLIP knows is marked."""
from __future__ import annotations

from pathlib import Path

import pytest
from gui_helpers import Shot, screenshot, type_into, wait_for

from app.widgets import ERROR
from trainer.config import OPTIMIZER_FIELDS

PRESETS = Path(__file__).resolve().parents[2] / "presets"

LORA_FIELDS = ["training.lora_type", "training.lora_rank", "training.lora_alpha", "training.lora_conv_rank",
               "training.lora_conv_alpha", "training.lora_dropout",
               "model.lora_weights", "model.merged_output_path", "model.merge_strength"]
EMBEDDING_FIELDS = ["training.embedding_placeholder", "training.embedding_vectors", "training.embedding_init_text",
                    "training.embedding_learning_rate"]
NOT_FOR_EMBEDDING = ["training.learning_rate", "training.weight_decay", "training.train_unet",
                     "training.train_text_encoder", "training.text_encoder_learning_rate",
                     "training.text_encoder_stop_epoch", "model.output_format"]
FULL_ONLY = ["training.weight_dtype", "training.stochastic_rounding", "training.fused_backward"]
# optimizer settings that adamw and adamw8bit (the built-in presets' optimizers) do not read: hidden for them
# (tests/gui/test_optimizer_fields.py checks each optimizer's)
NOT_FOR_ADAMW = {f"training.{name}" for name, names in OPTIMIZER_FIELDS.items() if "adamw" not in names}
# the Huber settings, which loss mse does not read, and the logit-normal ones, which uniform timesteps do not (the
# built-in presets' choices; test_optimizer_fields.py checks each choice)
NOT_FOR_DEFAULTS = {"training.huber_c", "training.huber_schedule", "training.timestep_logit_mean",
                    "training.timestep_logit_std"}
HIDDEN = {  # what each method hides; every other field of the training and model tabs is shown
    "full": set(LORA_FIELDS) | NOT_FOR_ADAMW | NOT_FOR_DEFAULTS,
    "lora": set(FULL_ONLY) | NOT_FOR_ADAMW | NOT_FOR_DEFAULTS,
    "embedding": set(LORA_FIELDS) | set(NOT_FOR_EMBEDDING) | set(FULL_ONLY) | NOT_FOR_ADAMW | NOT_FOR_DEFAULTS,
}


def labelled(window, path: str):
    return next(b.labelled for b in window.form.bindings_for(path) if b.labelled is not None)


def shown(window, path: str) -> bool:
    """The field's label and widget are gridded in its group, and the group is packed in its column."""
    field = labelled(window, path)
    group = field.label.master
    return (field.label.winfo_manager() == "grid" and field.widget.winfo_manager() == "grid"
            and group.winfo_manager() == "pack")


def tab_fields(window) -> list[str]:
    return [b.path for b in window.form.bindings
            if b.labelled is not None and b.path and b.path.split(".")[0] in ("training", "model")]


def choose_method(window, method: str) -> None:
    window.form.widget_for("training.method").set(method)
    window.update()
    assert window.preset.training.method == method


def check_shown_for(window, method: str) -> None:
    for path in tab_fields(window):
        assert shown(window, path) == (path not in HIDDEN[method]), f"method {method}: {path}"


def test_the_method_comes_first_in_the_training_tab(window):
    method = labelled(window, "training.method")
    column = method.label.master.master
    assert column.grid_info()["column"] == 0 and column.pack_slaves()[0] is method.label.master
    assert int(method.label.grid_info()["row"]) == 1  # the group's first field


def test_switching_method_shows_the_fields_that_apply(window):
    assert window.preset.training.method == "full"
    check_shown_for(window, "full")
    lora_group = labelled(window, "training.lora_rank").label.master
    column = lora_group.master
    assert lora_group not in column.pack_slaves()
    choose_method(window, "lora")
    order = column.pack_slaves()
    assert lora_group in order
    for method in ("lora", "embedding", "full", "lora", "full", "embedding", "lora"):
        choose_method(window, method)
        check_shown_for(window, method)
        assert (lora_group.winfo_manager() == "pack") == (method == "lora")
        assert (labelled(window, "model.lora_weights").label.master.winfo_manager() == "pack") == (method == "lora")
    assert column.pack_slaves() == order  # the LoRA group came back in its place
    assert all(b.labelled.label.winfo_manager() == "grid" for b in window.form.bindings  # other tabs untouched
               if b.labelled is not None and b.path  # (a concept's fields follow its own role and masks)
               and b.path.split(".")[0] not in ("training", "model", "concepts"))


def test_loading_the_lora_and_embedding_presets_shows_their_sections(window):
    assert window.load_file(PRESETS / "sd15_lora.json")
    window.update()
    assert window.preset.training.method == "lora"
    assert window.form.widget_for("training.method").get_raw() == "lora"
    check_shown_for(window, "lora")
    assert window.load_file(PRESETS / "sd15_embedding.json")
    window.update()
    assert window.preset.training.method == "embedding"
    check_shown_for(window, "embedding")
    assert window.form.widget_for("training.embedding_placeholder").get_raw() == "mystylexq"
    ours = [p for p in window.validate_now() if p.startswith(("training.", "model.output"))]
    assert ours == []  # only the base model and the concepts are left to choose
    assert window.load_file(PRESETS / "sd15_finetune.json")
    window.update()
    check_shown_for(window, "full")


@pytest.mark.parametrize("method", ["embedding", "full"])
def test_a_placeholder_clip_knows_is_marked_with_the_reason(window, method):
    choose_method(window, method)
    field = window.form.widget_for("training.embedding_placeholder")
    type_into(field, "cat")
    window.update()
    window.validate_now()
    binding = window.form.bindings_for("training.embedding_placeholder")[0]
    assert "already a token of CLIP's vocabulary" in binding.reason
    assert field.cget("border_color") == ERROR and shown(window, "training.embedding_placeholder")
    assert "cat" in binding.labelled._error_label.cget("text")  # the reason line beside the field
    type_into(field, "mystylexq")
    window.update()
    window.validate_now()
    assert binding.reason is None and field.cget("border_color") != ERROR


def test_a_field_with_a_problem_stays_in_sight(window):
    choose_method(window, "lora")
    type_into(window.form.widget_for("training.lora_rank"), "many")  # text that does not parse
    window.update()
    choose_method(window, "full")
    assert shown(window, "training.lora_rank") and not shown(window, "training.lora_alpha")
    window.validate_now()
    assert window.form.bindings_for("training.lora_rank")[0].reason
    type_into(window.form.widget_for("training.lora_rank"), "8")
    window.update()
    assert shown(window, "training.lora_rank")  # nothing goes away while it is edited
    choose_method(window, "embedding")
    assert not shown(window, "training.lora_rank")  # the next method change hides it

    # a field hidden while its value was fine, then made wrong by another field's edit, comes back
    window.preset.training.mixed_precision, window.preset.training.weight_dtype = "bf16", "bfloat16"
    window.form.refresh()
    window.tabs["training"].reload()
    assert not shown(window, "training.weight_dtype")
    window.form.widget_for("training.mixed_precision").set("no")
    window.update()
    assert shown(window, "training.weight_dtype")
    window.validate_now()
    assert "need mixed precision bf16" in window.form.bindings_for("training.weight_dtype")[0].reason

    # a LoRA to start from, left behind when the method changes, stays shown with its reason
    choose_method(window, "lora")
    type_into(window.form.widget_for("model.lora_weights"), "/nowhere/start.safetensors")
    window.update()
    choose_method(window, "full")
    assert shown(window, "model.lora_weights") and not shown(window, "model.merged_output_path")
    window.validate_now()
    assert "needs method lora" in window.form.bindings_for("model.lora_weights")[0].reason


def in_view(window, paths: list[str], tab) -> None:
    """Wait (at most 10 s) until the labels of the fields at `paths` lie in view in `tab`: a loaded machine may
    take a while to lay out a preset just loaded."""
    try:
        wait_for(window, lambda: all(Shot.inside(labelled(window, p).label, tab) for p in paths), "", timeout_s=10)
    except AssertionError:
        where = "; ".join(f"{p} at {Shot.where(labelled(window, p).label)}" for p in paths)
        raise AssertionError(f"not all in view after 10 s: {where}; the tab at {Shot.where(tab)}") from None


def test_screenshots_of_the_training_tab_per_method(window, pump, screenshots):
    for name in ("lora", "embedding"):
        assert window.load_file(PRESETS / f"sd15_{name}.json")
        window.tabview.set("training")
        frame = window.tabview.tab("training")
        first = ["training.method"] + (["training.lora_rank", "training.lora_alpha"] if name == "lora" else [])
        paths = first + ["training.embedding_placeholder", "training.embedding_vectors"]
        in_view(window, paths, frame)
        shot = screenshot(window, pump, screenshots, f"methods_training_{name}")
        for path in paths:
            label = labelled(window, path).label
            assert shot.inside(label, frame), f"{name}: {path} at {shot.where(label)}, the tab at {shot.where(frame)}"
            assert shot.colours(label) > 4, f"{name}: {path}'s label is blank"
    type_into(window.form.widget_for("training.embedding_placeholder"), "cat")
    window.update()
    window.validate_now()
    shot = screenshot(window, pump, screenshots, "methods_training_embedding_known_word")
    reason = labelled(window, "training.embedding_placeholder")._error_label
    assert shot.inside(reason, window.tabview.tab("training")) and shot.count(reason, ERROR) > 20
    window.tabview.set("model")
    assert window.load_file(PRESETS / "sd15_lora.json")
    paths = ["model.lora_weights", "model.merged_output_path", "model.merge_strength"]
    in_view(window, paths, window.tabview.tab("model"))
    shot = screenshot(window, pump, screenshots, "methods_model_lora")
    for path in paths:
        label, tab = labelled(window, path).label, window.tabview.tab("model")
        assert shot.inside(label, tab), f"{path} at {shot.where(label)}, the tab at {shot.where(tab)}"
