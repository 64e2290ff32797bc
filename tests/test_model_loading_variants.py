"""Single files other tools load: text encoder without `text_model.`, Lightning .ckpt, raw + EMA weights."""
import contextlib
import logging
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer.__main__ import main
from trainer.errors import ModelLoadError
from trainer.model import convert
from trainer.model.models import EMA_LOADED_NOTE, EMA_NOTE, SDComponents, load_model, save_model

PARTS = ("unet", "vae", "text_encoder")
LIGHTNING_MODULES = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> SDComponents:
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tiny_state_dict(tiny, tmp_path_factory) -> dict:
    """The tiny model in the original single-file layout, as SeaChange writes it."""
    path = save_model(tiny, tmp_path_factory.mktemp("single") / "tiny.safetensors", "single_file", "float32", {})
    return load_file(str(path))


def weights(components: SDComponents, part: str) -> dict:
    return {key: tensor.float() for key, tensor in getattr(components, part).state_dict().items()}


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), f"{what}: {key}"


def assert_same_weights(a: SDComponents, b: SDComponents, parts=PARTS) -> None:
    for part in parts:
        assert_same(weights(a, part), weights(b, part), part)


# ------------------------------------------------------------------- text encoder keys without `text_model.`


def without_text_model(state_dict: dict) -> dict:
    prefix = convert.TEXT_ENCODER_PREFIX
    return {("cond_stage_model.transformer." + key[len(prefix):] if key.startswith(prefix) else key): tensor
            for key, tensor in state_dict.items()}


def test_text_encoder_without_text_model_loads(tiny, tiny_state_dict, tiny_model_dir, tmp_path):
    old = without_text_model(tiny_state_dict)
    assert not any(key.startswith(convert.TEXT_ENCODER_PREFIX) for key in old)
    assert "cond_stage_model.transformer.final_layer_norm.weight" in old
    save_file(old, str(tmp_path / "old.safetensors"))
    loaded = load_model(str(tmp_path / "old.safetensors"), str(tiny_model_dir))
    assert_same_weights(tiny, loaded)
    assert loaded.weights_note == ""
    # `convert` writes it in the layout every tool reads, with the same weights
    assert main(["convert", str(tmp_path / "old.safetensors"), str(tmp_path / "new.safetensors"),
                 "--dtype", "float32", "--base-config", str(tiny_model_dir)]) == 0
    assert load_file(str(tmp_path / "new.safetensors")).keys() == tiny_state_dict.keys()
    assert_same_weights(tiny, load_model(str(tmp_path / "new.safetensors"), str(tiny_model_dir)))


def test_text_encoder_under_both_names_is_refused(tiny_state_dict, tiny_model_dir, tmp_path):
    both = dict(tiny_state_dict)
    both["cond_stage_model.transformer.final_layer_norm.weight"] = torch.zeros_like(
        both[convert.TEXT_ENCODER_PREFIX + "final_layer_norm.weight"])
    save_file(both, str(tmp_path / "both.safetensors"))
    with pytest.raises(ModelLoadError, match="twice") as info:
        load_model(str(tmp_path / "both.safetensors"), str(tiny_model_dir))
    assert "both.safetensors" in str(info.value)


# -------------------------------------------------------------------------------- Lightning-style .ckpt


def save_lightning_ckpt(state_dict: dict, path) -> None:
    """A .ckpt shaped like the original SD 1.x ones: state_dict beside Lightning's bookkeeping, pickled while a
    fake pytorch_lightning is importable, which is then removed again (SeaChange must not need it). torch.save's
    pickle protocol 2, as Lightning wrote them."""
    for name in LIGHTNING_MODULES:
        sys.modules[name] = types.ModuleType(name)
    module = sys.modules[LIGHTNING_MODULES[-1]]
    model_checkpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = model_checkpoint
    callback = model_checkpoint()
    callback.monitor, callback.best_model_score, callback.dirpath = "val/loss", torch.tensor(0.25), "/logs/ckpts"
    try:
        torch.save({"state_dict": state_dict, "global_step": 5, "epoch": 1, "pytorch-lightning_version": "1.4.2",
                    "callbacks": {model_checkpoint: {"best_model_score": np.float64(0.25)}, "checkpoint": callback},
                    "loss": np.float64(0.125), "steps": np.int64(5), "lr": np.float32(1e-4)},
                   path)
    finally:
        for name in LIGHTNING_MODULES:
            del sys.modules[name]


def test_lightning_ckpt_loads(tiny, tiny_state_dict, tiny_model_dir, tmp_path):
    save_lightning_ckpt(tiny_state_dict, tmp_path / "sd.ckpt")
    assert_same_weights(tiny, load_model(str(tmp_path / "sd.ckpt"), str(tiny_model_dir)))
    assert not any(name.startswith("pytorch_lightning") for name in sys.modules)


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


class EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import builtins
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [SystemCall, EvalCall])
def test_code_in_a_ckpt_stays_refused(tiny_state_dict, tiny_model_dir, tmp_path, payload):
    marker = tmp_path / "ran"
    torch.save({"state_dict": tiny_state_dict, "global_step": 5, "loss": np.float64(0.5),
                "payload": payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelLoadError, match="refused") as info:
        load_model(str(tmp_path / "evil.ckpt"), str(tiny_model_dir))
    message = str(info.value)
    assert str(tmp_path / "evil.ckpt") in message and "unsafe pickle" in message
    assert "system" in message or "eval" in message  # names what was refused
    assert "\x1b" not in message and "weights_only" not in message  # no escape codes, no advice to run code
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- raw + EMA


def with_ema(state_dict: dict, shift: float = 0.5) -> dict:
    """The original LDM layout of a file with EMA weights: model_ema.<UNet name without dots> copies (here the
    raw weights shifted), the counters num_updates and decay."""
    out = dict(state_dict)
    for key, tensor in state_dict.items():
        if key.startswith(convert.UNET_PREFIX):
            out[convert.ema_key(key)] = tensor + shift
    out["model_ema.num_updates"] = torch.tensor(5, dtype=torch.int32)
    out["model_ema.decay"] = torch.tensor(0.9999)
    return out


@contextlib.contextmanager
def diffusers_warnings():
    """The messages diffusers logs at WARNING level meanwhile (whatever verbosity other code set)."""
    logger, records = logging.getLogger("diffusers"), []
    handler, level = logging.Handler(logging.WARNING), logger.level
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_ema_key_names_follow_the_original_code():
    assert convert.ema_key("model.diffusion_model.input_blocks.0.0.weight") == \
        "model_ema.diffusion_modelinput_blocks00weight"


def test_file_with_ema_loads_raw_by_default_and_ema_on_request(tiny, tiny_state_dict, tiny_model_dir, tmp_path):
    path = tmp_path / "ema.safetensors"
    save_file(with_ema(tiny_state_dict), str(path))
    with diffusers_warnings() as warnings:
        raw = load_model(str(path), str(tiny_model_dir))
    assert not [text for text in warnings if "extract_ema" in text]  # a flag SeaChange does not have
    assert_same_weights(tiny, raw)
    assert raw.weights_note == EMA_NOTE and "raw" in raw.weights_note and "model.load_ema" in raw.weights_note
    ema = load_model(str(path), str(tiny_model_dir), load_ema=True)
    assert_same_weights(tiny, ema, parts=("vae", "text_encoder"))
    assert_same(weights(ema, "unet"), {key: t + 0.5 for key, t in weights(tiny, "unet").items()}, "EMA UNet")
    assert ema.weights_note == EMA_LOADED_NOTE


def test_load_ema_needs_ema_weights(tiny_state_dict, tiny_model_dir, tmp_path):
    save_file(tiny_state_dict, str(tmp_path / "plain.safetensors"))
    assert load_model(str(tmp_path / "plain.safetensors"), str(tiny_model_dir)).weights_note == ""
    for path in (tmp_path / "plain.safetensors", tiny_model_dir):
        with pytest.raises(ModelLoadError, match="model.load_ema") as info:
            load_model(str(path), str(tiny_model_dir), load_ema=True)
        assert str(path) in str(info.value) and "no EMA weights" in str(info.value)
    partial = with_ema(tiny_state_dict)
    del partial[convert.ema_key(convert.UNET_PREFIX + "out.2.bias")]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match="incomplete"):
        load_model(str(tmp_path / "partial.safetensors"), str(tiny_model_dir), load_ema=True)


def test_ema_in_a_lightning_ckpt(tiny, tiny_state_dict, tiny_model_dir, tmp_path):
    save_lightning_ckpt(with_ema(tiny_state_dict, shift=-1.0), tmp_path / "ema.ckpt")
    ema = load_model(str(tmp_path / "ema.ckpt"), str(tiny_model_dir), load_ema=True)
    assert_same(weights(ema, "unet"), {key: t - 1.0 for key, t in weights(tiny, "unet").items()}, "EMA UNet")


def test_convert_ema_option(tiny, tiny_state_dict, tiny_model_dir, tmp_path, capsys):
    save_file(with_ema(tiny_state_dict), str(tmp_path / "ema.safetensors"))
    common = ["--dtype", "float32", "--base-config", str(tiny_model_dir)]
    assert main(["convert", str(tmp_path / "ema.safetensors"), str(tmp_path / "out"), "--ema", *common]) == 0
    assert "EMA weights" in capsys.readouterr().out
    written = load_file(str(tmp_path / "out.safetensors"))
    assert not any(key.startswith("model_ema") for key in written)
    for key, tensor in tiny_state_dict.items():
        expected = tensor + 0.5 if key.startswith(convert.UNET_PREFIX) else tensor
        assert torch.equal(written[key], expected), key
    assert main(["convert", str(tmp_path / "ema.safetensors"), str(tmp_path / "raw"), *common]) == 0
    assert "raw weights" in capsys.readouterr().out
    assert all(torch.equal(load_file(str(tmp_path / "raw.safetensors"))[key], tensor)
               for key, tensor in tiny_state_dict.items())
    assert main(["convert", str(tmp_path / "raw.safetensors"), str(tmp_path / "x"), "--ema", *common]) == 2
    error = capsys.readouterr().err
    assert "--ema" in error and "model.load_ema" not in error


def test_a_run_starts_from_the_weights_the_preset_chooses_and_says_which(tiny_state_dict, tiny_model_dir,
                                                                         color_concept, tmp_path):
    import queue

    from tiny_presets import make_preset
    from trainer import events as ev
    from trainer.train.loop import train
    path = tmp_path / "ema.safetensors"
    save_file(with_ema(tiny_state_dict), str(path))
    for load_ema, note in ((False, EMA_NOTE), (True, EMA_LOADED_NOTE)):
        preset = make_preset(tmp_path / str(load_ema), path, color_concept, training={"max_steps": 1},
                             model={"base_config": str(tiny_model_dir), "load_ema": load_ema})
        events = []
        assert train(preset, events.append, queue.Queue()).outcome == "completed"
        assert f"Loaded the {note}" in [e.text for e in events if isinstance(e, ev.Log)]
