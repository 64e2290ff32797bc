"""What a base model was trained to predict, and whether its UNet can be fed, from the markers real files carry. No UI.

Markers, as the tools that write them spell them:
- diffusers: scheduler/scheduler_config.json `prediction_type` ("epsilon" | "v_prediction" | "sample"; missing means
  "epsilon", diffusers' default) and `rescale_betas_zero_snr`.
- Stability AI's ModelSpec (github.com/Stability-AI/ModelSpec, README): safetensors metadata
  `modelspec.prediction_type`, "epsilon" or "v"; kohya's sd-scripts (library/sai_model_spec.py) writes exactly those.
- SeaChange's own `seachange.preset` (the run's preset as JSON: training.prediction_type).
- kohya's LoRA training metadata `ss_base_model_version` ("sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v";
  library/model_util.py get_model_version_str_for_sd1_sd2) and, from other tools, `ss_v_parameterization`
  ("true"/"false").
- ComfyUI: a tensor named `v_pred` in the file (comfy/supported_models.py).
- A1111: NAME.yaml beside NAME.safetensors / NAME.ckpt (modules/sd_models_config.py,
  find_checkpoint_config_near_filename), an LDM config whose `model.params.parameterization` is "eps"
  (the default) or "v".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from trainer.config import PREDICTION_TYPES

SPELLINGS = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
             "v-prediction": "v_prediction"}
SD_LATENT_CHANNELS = 4  # SD 1.x/2.x VAE latents
COMFY_V_PRED_KEY = "v_pred"


def objective_name(value: Any, where: str) -> str:
    """diffusers' name ("epsilon" | "v_prediction") for a prediction type as files spell it ("epsilon", "eps", "v",
    "v_prediction"; any case). Raises ValueError naming `where` for anything else ("x0", "sample", "flow", ...)."""
    name = SPELLINGS.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"{where} is {value!r}: SeaChange trains epsilon or v-prediction models only. Use an "
                         "SD 1.5 model trained with one of them, or correct the marker if it is wrong")
    return name


def from_scheduler_config(config: Mapping[str, Any], where: str) -> tuple[str, str]:
    """(objective, source) from a diffusers scheduler config (`where` names it, e.g. "scheduler config in /m").
    Without `prediction_type` the model is epsilon, as diffusers assumes. ValueError for an objective SeaChange
    cannot train."""
    if config.get("prediction_type") is None:
        return "epsilon", f"{where} (no prediction_type: diffusers' default)"
    return objective_name(config["prediction_type"], f"{where}: prediction_type"), where


def _modelspec(value: str, where: str) -> str | None:
    return None if value.strip().lower() in ("", "auto") else objective_name(value, where)


def _seachange_preset(value: str, where: str) -> str | None:
    try:
        training = json.loads(value).get("training", {})
        chosen = training.get("prediction_type", "auto")
    except (ValueError, AttributeError):
        return None  # not a preset we can read: it states nothing
    return None if chosen == "auto" else objective_name(chosen, where)


def _kohya_flag(value: str, where: str) -> str | None:
    return {"true": "v_prediction", "false": "epsilon"}.get(value.strip().lower())


def _kohya_version(value: str, where: str) -> str | None:
    value = value.strip().lower()
    if not value.startswith(("sd_v1", "sd_v2")):
        return None
    return "v_prediction" if value.endswith("_v") else "epsilon"


# Strongest first: the standard key, SeaChange's own record, then kohya's training metadata.
METADATA_READERS: tuple[tuple[str, Callable[[str, str], str | None]], ...] = (
    ("modelspec.prediction_type", _modelspec),
    ("seachange.preset", _seachange_preset),
    ("ss_v_parameterization", _kohya_flag),
    ("ss_base_model_version", _kohya_version),
)


def from_metadata(metadata: Mapping[str, str], keys: Iterable[str], path: Path) -> tuple[str, str] | None:
    """(objective, source) from a single file's safetensors header metadata and its tensor names, or None when
    nothing in them states one. Readers are tried in METADATA_READERS order, then ComfyUI's `v_pred` tensor.
    ValueError naming `path` when a marker states an objective SeaChange cannot train."""
    for key, read in METADATA_READERS:
        if key in metadata:
            found = read(str(metadata[key]), f"{path}: metadata {key}")
            if found:
                return found, f"metadata of {path.name} ({key})"
    if COMFY_V_PRED_KEY in set(keys):
        return "v_prediction", f"tensor '{COMFY_V_PRED_KEY}' in {path.name} (ComfyUI's v-prediction marker)"
    return None


def sidecar_yaml(model_file: Path) -> Path:
    """Where A1111 looks for a single file's own config: the same path with .yaml for the last suffix."""
    return model_file.with_suffix(".yaml")


def from_yaml(path: Path) -> tuple[str, str]:
    """(objective, source) from an A1111/LDM model config: `model.params.parameterization`, "eps" when missing.
    Raises ValueError naming the file when it cannot be read or parsed, has no model.params section, or states
    an objective SeaChange cannot train."""
    import yaml

    advice = "fix it, or move it away if it does not belong to this model (A1111 would use it too)"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        detail = getattr(error, "problem", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path}: the model config beside the model cannot be read{at}: {detail}; {advice}") \
            from error
    model = config.get("model") if isinstance(config, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: not a Stable Diffusion model config (no model.params section); {advice}")
    value = params.get("parameterization", "eps")
    return objective_name(value, f"{path}: model.params.parameterization"), f"{path.name} beside the model"


def channel_problem(in_channels: int, latent_channels: int) -> str | None:
    """Why a UNet with `in_channels` inputs cannot be trained on VAE latents of `latent_channels` channels
    (starts with "is ..."; the caller puts the path before it), or None when they match."""
    if in_channels == latent_channels:
        return None
    if latent_channels != SD_LATENT_CHANNELS:
        kind = f"a model whose UNet takes {in_channels} input channels but whose VAE makes {latent_channels}"
    elif in_channels == 9:
        kind = "an inpainting model (9 input channels: latents, mask and masked image)"
    elif in_channels == 8:
        kind = "an instruct-pix2pix / image-editing model (8 input channels: latents and the source image's latents)"
    else:
        kind = f"a model whose UNet takes {in_channels} input channels"
    return (f"is {kind}; SeaChange trains text-to-image models with {latent_channels} (the VAE's latent channels). "
            "Use a text-to-image SD 1.5 model, e.g. the one it was made from")


def resolve_prediction_type(requested: str, components: Any) -> tuple[str, str | None]:
    """The objective to train, and a warning or None. `requested` is training.prediction_type ("auto",
    "epsilon" or "v_prediction"); `components` has the base model's `prediction_type` and `prediction_source`
    (trainer.model.models.SDComponents). "auto" and a choice equal to the model's give the model's objective and no
    warning; a choice that contradicts it is kept, with a warning naming both objectives and where the model's
    came from. Raises ValueError for any other `requested`."""
    own, source = components.prediction_type, components.prediction_source
    if requested == "auto":
        return own, None
    if requested not in PREDICTION_TYPES:
        raise ValueError(f"training.prediction_type must be auto, epsilon or v_prediction, not {requested!r}")
    if requested == own:
        return requested, None
    return requested, (f"training.prediction_type is {requested}, but the base model predicts {own} ({source}). "
                       f"Training retrains it to predict {requested}: the result predicts {requested}, not "
                       f"{own}, and must be sampled that way (its metadata says so). Set "
                       "prediction_type to auto to keep the model's own objective.")
