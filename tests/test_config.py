"""The preset: round trip, sparse merge over defaults, strict errors naming the dotted path, migrations, --set."""
import json
from pathlib import Path

import pytest

from trainer import config as cfg
from trainer import fields
from trainer.config import ConceptConfig, Preset, SamplePrompt
from trainer.fields import ConfigError

PRESETS = sorted((Path(__file__).parents[1] / "presets").glob("*.json"))


def full_preset() -> Preset:
    p = Preset()
    p.concepts.append(ConceptConfig(name="cats", path="/data/cats", caption_source="single", caption="a cat",
                                    repeats=2.5))
    p.sampling.prompts.append(SamplePrompt(prompt="a cat", seed=3, sampler="unipc"))
    p.training.learning_rate = 3e-6
    return p


def test_round_trip_through_file(tmp_path):
    preset = full_preset()
    cfg.save_preset(preset, tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["version"] == cfg.VERSION and list(data)[1:] == list(cfg.SECTIONS)
    assert cfg.load_preset(tmp_path / "p.json") == preset
    assert (tmp_path / "p.json").read_text().startswith('{\n  "version"')  # indent 2


def test_sparse_file_is_laid_over_defaults():
    preset = cfg.preset_from_dict({"version": 1, "training": {"batch_size": 3},
                                   "concepts": [{"path": "x"}], "sampling": {"prompts": [{"prompt": "p"}]}})
    assert preset.training.batch_size == 3
    assert preset.training.learning_rate == Preset().training.learning_rate
    assert preset.concepts[0] == ConceptConfig(path="x")
    assert preset.sampling.prompts[0].steps == SamplePrompt().steps


@pytest.mark.parametrize("data, path", [
    ({"training": {"lerning_rate": 1e-5}}, "training.lerning_rate: unknown key"),
    ({"trainig": {}}, "trainig: unknown key"),
    ({"training": {"batch_size": "2"}}, "training.batch_size: expected a whole number"),
    ({"training": {"batch_size": 2.5}}, "training.batch_size: expected a whole number"),
    ({"training": {"gradient_checkpointing": 1}}, "training.gradient_checkpointing: expected true or false"),
    ({"concepts": [{}, {"repeats": "many"}]}, "concepts.1.repeats: expected a number"),
    ({"concepts": {"path": "x"}}, "concepts: expected a list"),
    ({"sampling": {"prompts": [{"sampler": "plms"}]}}, "sampling.prompts.0.sampler: 'plms' is not one of"),
    ({"training": {"batch_size": 0}}, "training.batch_size: 0 is below the minimum 1"),
    ({"training": {"optimizer": "adam"}}, "training.optimizer: 'adam' is not one of"),
    ({"training": {"resolution": "512,abc"}}, "training.resolution: 'abc' is not a whole number"),
    ({"training": {"resolution": "500"}}, "training.resolution: 500 must be a multiple of 8"),
    ({"model": {"output_dtype": "int8"}}, "model.output_dtype: 'int8' is not one of"),
    ({"training": {"zero_terminal_snr": True, "prediction_type": "epsilon"}},
     "training.zero_terminal_snr: needs prediction v_prediction"),
    ({"training": {"train_unet": False}}, "training.train_unet: nothing to train"),
    ({"sampling": {"prompts": [{"width": 100}]}}, "sampling.prompts.0.width: must be a multiple of 8"),
])
def test_errors_name_the_dotted_path(data, path):
    with pytest.raises(ConfigError) as e:
        cfg.preset_from_dict({"version": 1, **data})
    assert str(e.value).startswith(path)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_preset_saved_in_any_json_encoding_loads(encoding, tmp_path):
    """UTF-8 with or without a byte-order mark (Notepad's "UTF-8 with BOM"), UTF-16 ("Unicode") and UTF-32."""
    text = json.dumps({"version": 1, "training": {"batch_size": 3}, "sampling": {"prompts": [{"prompt": "café"}]}},
                      ensure_ascii=False)
    (tmp_path / "p.json").write_bytes(text.encode(encoding))
    preset = cfg.load_preset(tmp_path / "p.json")
    assert preset.training.batch_size == 3 and preset.sampling.prompts[0].prompt == "café"


def test_a_preset_that_is_no_text_or_has_a_typo_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "latin1.json").write_bytes('{"version": 1, "sampling": {"prompts": [{"prompt": "café"}]}}'
                                           .encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json is not JSON text in UTF-8 \(byte 0xe9 at position \d+\); "
                                          "save it as UTF-8"):
        cfg.load_preset(tmp_path / "latin1.json")
    (tmp_path / "typo.json").write_text('{"version": 1, "training": {"learnig_rate": 1e-4}, "sampling": {"evry": 1}}')
    with pytest.raises(ConfigError) as e:
        cfg.load_preset(tmp_path / "typo.json")
    assert str(e.value) == (f"training.learnig_rate: unknown key; did you mean learning_rate? "
                            f"(in {tmp_path / 'typo.json'})")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"preset: expected a JSON object.*\(in .*list\.json\)"):
        cfg.load_preset(tmp_path / "list.json")
    with pytest.raises(ConfigError, match=r"^trainig: unknown key; did you mean training\?$"):
        cfg.preset_from_dict({"version": 1, "trainig": {}})
    with pytest.raises(ConfigError, match=r"^training\.zzz: unknown key$"):  # nothing close: no guess
        cfg.preset_from_dict({"version": 1, "training": {"zzz": 1}})


def test_version_errors(tmp_path):
    with pytest.raises(ConfigError, match="newer than this SeaChange"):
        cfg.preset_from_dict({"version": cfg.VERSION + 1})
    with pytest.raises(ConfigError, match="version: missing"):
        cfg.preset_from_dict({"training": {}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        cfg.load_preset(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.load_preset(tmp_path / "missing.json")


def test_migrations_run_in_order(monkeypatch):
    calls = []
    monkeypatch.setattr(cfg, "VERSION", 3)
    monkeypatch.setattr(cfg, "MIGRATIONS", {
        1: lambda d: calls.append(1) or {**d, "training": {"lerning_rate": 1}},
        2: lambda d: calls.append(2) or {**d, "training": {"learning_rate": d["training"]["lerning_rate"] * 2}},
    })
    preset = cfg.preset_from_dict({"version": 1})
    assert calls == [1, 2] and preset.training.learning_rate == 2.0


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_shipped_presets_validate_and_are_sparse(path):
    preset = cfg.load_preset(path)
    assert cfg.validate(preset) == []
    data = json.loads(path.read_text())
    defaults = cfg.preset_to_dict(Preset())
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert defaults[section][key] != value, f"{path.name}: {section}.{key} repeats the default"


def test_every_field_has_label_and_help():
    def walk(cls, prefix):
        import dataclasses, typing
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
            if dataclasses.is_dataclass(inner) and prefix == "":
                walk(inner, f.name + ".")
                continue
            if dataclasses.is_dataclass(inner):
                walk(inner, prefix + f.name + ".")
            assert f.metadata.get("label") and f.metadata.get("help"), prefix + f.name
    walk(Preset, "")


def test_set_overrides_are_typed_and_validated():
    preset = full_preset()
    out = fields.apply_overrides(preset, ["training.learning_rate=2e-6", "training.gradient_checkpointing=true",
                                          "concepts.0.repeats=3", "sampling.prompts.0.prompt=a dog = good"],
                                 cfg.validate)
    assert out.training.learning_rate == 2e-6 and out.training.gradient_checkpointing is True
    assert out.concepts[0].repeats == 3.0 and out.sampling.prompts[0].prompt == "a dog = good"
    assert preset.training.learning_rate == 3e-6  # the original is untouched
    for bad, msg in [("training.lerning_rate=1", "training.lerning_rate: unknown key"),
                     ("training.batch_size=two", "training.batch_size: expected a whole number"),
                     ("training.batch_size=0", "training.batch_size: 0 is below the minimum"),
                     ("concepts.5.path=x", "concepts.5: no item 5"),
                     ("training.batch_size", "--set training.batch_size: expected key=value")]:
        with pytest.raises(ConfigError) as e:
            fields.apply_overrides(preset, [bad], cfg.validate)
        assert str(e.value).startswith(msg), str(e.value)


def test_path_checks(tmp_path):
    preset = full_preset()
    problems = cfg.validate(preset, check_paths=True)
    assert any(p.startswith("model.base_model: no base model") for p in problems)
    assert any(p.startswith("concepts.0.path: folder /data/cats") for p in problems)
    preset.model.base_model = str(tmp_path)
    preset.concepts[0].path = str(tmp_path)
    assert cfg.validate(preset, check_paths=True) == []


def test_field_meta_reads_through_lists():
    assert fields.field_meta("sampling.prompts.0.sampler", cfg.Preset)["choices"] == cfg.SAMPLERS
    assert fields.field_meta("training.learning_rate", cfg.Preset)["label"] == "Learning rate"
