"""Small CPU presets over the defaults for the engine tests."""
from __future__ import annotations


def make_preset(tmp_path, model_dir, concept_dir, **sections):
    """A small CPU preset over the defaults; `sections` maps 'training' etc. to dicts of overrides."""
    from trainer.config import preset_from_dict
    data = {
        "version": 1,
        "general": {"workspace_dir": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
                    "tensorboard": False, "seed": 7},
        "model": {"base_model": str(model_dir), "output_path": str(tmp_path / "out.safetensors"),
                  "output_dtype": "float32"},
        "concepts": [{"name": "colors", "path": str(concept_dir)}],
        "training": {"epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "resolution": "32"},
        "sampling": {"unit": "never"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = values
    return preset_from_dict(data)


def run_stopping_at(preset, stop_at: int | None = None, resume=None):
    """Train in-process (trainer.train.loop.train); stop_at sends STOP once that step is reported. Returns
    (RunFinished, the events)."""
    import queue

    from trainer import events as ev
    from trainer.train.loop import train
    commands, events = queue.Queue(), []

    def emit(e):
        events.append(e)
        if stop_at and isinstance(e, ev.Progress) and e.step == stop_at:
            commands.put(ev.Command(ev.STOP))
    return train(preset, emit, commands, resume=resume), events
