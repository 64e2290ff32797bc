"""Load SD 1.5 offline (diffusers folder, single .safetensors, .ckpt) and save it in each format. No UI here."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainer.config import OUTPUT_DTYPES
from trainer.errors import ModelLoadError
from trainer.model import convert
from trainer.model.checkpoint_pickle import checkpoint_safe_globals, pickle_refusal_detail
from trainer.train import objective

BUNDLED_SD15 = Path(__file__).parents[1] / "assets" / "sd15"
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
METADATA_FILE = "seachange_metadata.json"
FIRST_CONV = convert.UNET_PREFIX + "input_blocks.0.0.weight"  # [C, in_channels, 3, 3]: 4 latents, 9 inpainting


@dataclass
class SDComponents:
    unet: Any          # diffusers UNet2DConditionModel
    vae: Any           # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any     # transformers CLIPTokenizer
    noise_scheduler: Any  # diffusers DDPMScheduler configured like the model's scheduler, with its objective
    prediction_type: str = "epsilon"  # the base model's own objective: "epsilon" | "v_prediction"
    prediction_source: str = "default"  # where that came from, in a few words (a config, a metadata key, a .yaml)
    zero_terminal_snr: bool = False  # its scheduler config rescales the betas to zero terminal SNR
    weights_note: str = ""  # which UNet weights were loaded when the file holds raw and EMA ones; "" otherwise


# ---------------------------------------------------------------------------------------------------- loading


def load_model(base_model: str, base_config: str | None = None, *, load_ema: bool = False) -> SDComponents:
    """SD 1.5 components (float32, CPU, eval mode) from a diffusers folder, an original-layout .safetensors or a
    .ckpt, with the model's own objective (prediction_type, prediction_source, zero_terminal_snr; see
    trainer/train/objective.py for the markers read). Single files take their configs from `base_config` (a diffusers
    folder) or the bundled SD 1.5 ones; text-encoder keys without `text_model.` (older files) are read as
    A1111 and ComfyUI read them. A file with raw and EMA UNet weights (`model_ema.*`, the original LDM layout)
    gives the raw ones, or with `load_ema` (the preset's model.load_ema) the EMA ones; `weights_note` says which.
    A Lightning .ckpt loads with only the harmless globals A1111 and ComfyUI allow. Never touches the network.
    Raises ModelLoadError naming the path and the problem, before any weights are read for a UNet the training
    cannot feed (inpainting, edit models) or a marker that cannot be read; also for `load_ema` on a model
    without EMA weights."""
    path = Path(base_model).expanduser()
    if not str(base_model).strip():
        raise ModelLoadError("no base model given")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        if load_ema:
            raise ModelLoadError(f"{path}: model.load_ema is on, but a diffusers folder holds no EMA weights "
                                 "(only single files may: model_ema.* keys); turn model.load_ema off")
        return _load_diffusers_folder(path)
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path}: unknown model file type {path.suffix!r}; use a diffusers folder, "
                             "a .safetensors or a .ckpt")
    with tempfile.TemporaryDirectory(prefix="seachange-configs-") as scratch:
        return _load_file(path, suffix, base_config, load_ema, Path(scratch))


def _load_file(path: Path, suffix: str, base_config: str | None, load_ema: bool, scratch: Path) -> SDComponents:
    """load_model for a single file or .ckpt; `scratch` holds the configs a SeaChange file carries, if used."""
    header = _safetensors_header(path) if suffix in SINGLE_FILE_SUFFIXES else None
    embedded = header[0].get(CONFIGS_KEY) if header and not base_config else None
    config_dir = _write_configs(path, embedded, scratch) if embedded else _config_dir(base_config)
    sidecar = objective.sidecar_yaml(path)  # A1111 obeys the .yaml beside the file, so it wins over metadata
    stated = _marker(objective.from_yaml, sidecar) if sidecar.exists() else None
    if header is not None:
        metadata, keys, in_channels = header
        _check_channels(path, in_channels, config_dir)
        stated = stated or _marker(objective.from_metadata, metadata, keys, path)
        checkpoint = _read_safetensors(path)
    else:
        checkpoint = _read_pickle_checkpoint(path)
        first_conv = checkpoint.get(FIRST_CONV)
        _check_channels(path, first_conv.shape[1] if first_conv is not None and first_conv.ndim == 4 else None,
                        config_dir)
        stated = stated or _marker(objective.from_metadata, {}, checkpoint.keys(), path)
    checkpoint, note = _chosen_weights(path, checkpoint, load_ema)
    components = _load_single_file(path, checkpoint, config_dir, stated)
    components.weights_note = note
    return components


CONFIGS_KEY = "seachange.configs"  # the diffusers configs of a single file SeaChange wrote: {part: JSON string}
CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                "scheduler": "scheduler_config.json"}


def _write_configs(path: Path, embedded: str, folder: Path) -> Path:
    """The diffusers config folder a SeaChange file carries in its metadata (CONFIGS_KEY), written to `folder`:
    its own model loads back with no base_config, whatever its shapes. ModelLoadError if it cannot be read."""
    try:
        configs = json.loads(embedded)
        for part, name in CONFIG_FILES.items():
            (folder / part).mkdir()
            (folder / part / name).write_text(configs[part], encoding="utf-8")
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise ModelLoadError(f"{path}: its {CONFIGS_KEY} metadata cannot be read ({_first_line(error)}); "
                             "set model.base_config to the diffusers folder it was made from") from error
    return folder


def _configs_of(components: SDComponents) -> str:
    """CONFIGS_KEY's value: each part's diffusers config, as its own save_pretrained would write it."""
    parts = {"unet": components.unet, "vae": components.vae, "text_encoder": components.text_encoder,
             "scheduler": components.noise_scheduler}
    return json.dumps({part: module.config.to_json_string() if hasattr(module.config, "to_json_string")
                       else module.to_json_string() for part, module in parts.items()})


EMA_NOTE = "raw weights (the file also holds EMA weights; model.load_ema starts from those)"
EMA_LOADED_NOTE = "EMA weights (model.load_ema; the file also holds raw weights)"


def _chosen_weights(path: Path, checkpoint: dict, load_ema: bool) -> tuple[dict, str]:
    """The checkpoint in the layout the converters read (text encoder under `text_model.`, no `model_ema.*`
    keys, the UNet raw or EMA as asked) and the note on which UNet weights those are ("" for a plain file)."""
    try:
        checkpoint = convert.with_text_model_prefix(checkpoint)
    except ValueError as error:
        raise ModelLoadError(f"{path}: {error}") from error
    has_ema = convert.has_ema_weights(checkpoint)
    if load_ema and not has_ema:
        raise ModelLoadError(f"{path}: model.load_ema is on, but the file holds no EMA weights (no model_ema.* "
                             "keys); turn model.load_ema off to load its weights")
    try:
        chosen = convert.unet_weights(checkpoint, use_ema=load_ema)
    except KeyError as error:
        raise ModelLoadError(f"{path}: model.load_ema is on, but the file's EMA weights are incomplete: "
                             f"{error.args[0]}; turn model.load_ema off to load the raw weights") from error
    return chosen, (EMA_LOADED_NOTE if load_ema else EMA_NOTE) if has_ema else ""


def _config_dir(base_config: str | None) -> Path:
    if not base_config:
        return BUNDLED_SD15
    folder = Path(base_config).expanduser()
    if not (folder / "unet").is_dir() or not (folder / "vae").is_dir() or not (folder / "text_encoder").is_dir():
        raise ModelLoadError(f"{folder}: base config must be a diffusers folder with unet/, vae/ and "
                             "text_encoder/ configs")
    return folder


def _load_diffusers_folder(folder: Path) -> SDComponents:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / sub).is_dir()]
    if missing:
        raise ModelLoadError(f"{folder}: not a Stable Diffusion diffusers folder (missing {', '.join(missing)})")
    _check_channels(folder, None, folder)  # from the configs, before any weights
    scheduler_config = _scheduler_config(folder)
    stated = _marker(objective.from_scheduler_config, scheduler_config, f"scheduler config in {folder}")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                    torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True,
                                                     dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{folder}: cannot load the diffusers folder: {_first_line(error)}") from error
    return _components(unet, vae, text_encoder, tokenizer, scheduler_config, stated)


def _components(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler_config: dict,
                stated: tuple[str, str]) -> SDComponents:
    """The loaded modules in eval mode, with a DDPM scheduler on the model's noise schedule and objective."""
    from diffusers import DDPMScheduler

    prediction_type, source = stated
    scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=prediction_type)  # a keyword: a dict
    # entry is ignored where the config lists the key among its `_use_default_values`
    return SDComponents(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, prediction_type, source,
                        bool(scheduler_config.get("rescale_betas_zero_snr", False)))


def _scheduler_config(config_dir: Path) -> dict:
    """The model's scheduler config (SD 1.5 ships a PNDM one; the betas and the objective are what matter)."""
    from diffusers import DDPMScheduler

    folder = config_dir / "scheduler" if (config_dir / "scheduler").is_dir() else BUNDLED_SD15 / "scheduler"
    try:
        return dict(DDPMScheduler.load_config(folder))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder}: cannot read the scheduler config: {_first_line(error)}") from error


def _check_channels(where: Path, in_channels: int | None, config_dir: Path) -> None:
    """Refuse a UNet the training cannot feed: `in_channels` (read from the file's first conv weight; None when
    unknown) and the unet config's in_channels must equal the VAE config's latent_channels (4 for SD)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        latent_channels = int(AutoencoderKL.load_config(config_dir / "vae").get("latent_channels", 4))
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"{config_dir}: cannot read the unet and vae configs: {_first_line(error)}") from error
    for place, channels in ((where, in_channels), (config_dir, int(unet_config.get("in_channels", 4)))):
        problem = None if channels is None else objective.channel_problem(channels, latent_channels)
        if problem:
            raise ModelLoadError(f"{place}: {problem}")


def _safetensors_header(path: Path) -> tuple[dict, set, int | None]:
    """(metadata, tensor names, UNet input channels or None) from the header alone, without reading weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = dict(f.metadata() or {}), set(f.keys())
            shape = f.get_slice(FIRST_CONV).get_shape() if FIRST_CONV in keys else []
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise ModelLoadError(f"{path}: not a readable .safetensors file (corrupt or truncated?): "
                             f"{_first_line(error)}") from error
    return metadata, keys, shape[1] if len(shape) == 4 else None


def _marker(read: Callable, *args: Any) -> Any:
    """Call a reader of trainer/train/objective.py; its ValueError (a marker SeaChange cannot use) is a
    ModelLoadError."""
    try:
        return read(*args)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error


def _config_objective(config_dir: Path, scheduler_config: dict) -> tuple[str, str]:
    """A single file without markers: its base config's scheduler, or SD 1.x's epsilon."""
    if config_dir == BUNDLED_SD15 or scheduler_config.get("prediction_type") is None:
        return "epsilon", "default for SD 1.x: no marker found"
    return _marker(objective.from_scheduler_config, scheduler_config, f"scheduler config in base config {config_dir}")


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise ModelLoadError(f"{path}: not a readable .safetensors file (corrupt or truncated?): "
                             f"{_first_line(error)}") from error


def _read_pickle_checkpoint(path: Path) -> dict:
    """A .ckpt read with weights_only=True: tensors, containers, and the harmless bookkeeping of Lightning
    training checkpoints (checkpoint_pickle.checkpoint_safe_globals), never arbitrary code. Returns the tensors of
    its state dict."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch warns before refusing; the refusal below says it all
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path}: refused: this .ckpt holds Python objects or code beyond plain tensors (unsafe pickle), "
            "and SeaChange only loads weights. Convert it to .safetensors with a tool you trust. "
            f"Detail: {pickle_refusal_detail(error)}") from error
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable .ckpt (corrupt or truncated?): {_first_line(error)}") from error
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the .ckpt holds a {type(data).__name__}, not a state dict")
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}


def empty_models(base_model: str, base_config: str | None = None) -> tuple[Any, Any, Any]:
    """The UNet, VAE and text encoder of `base_model` (a diffusers folder, a single file or a .ckpt) on the meta
    device, built from its configs alone: the folder's own, a SeaChange file's embedded ones, `base_config`'s or
    the bundled SD 1.5 ones, as load_model picks them. No weight is read (trainer.tools.memory sizes a run with them).
    Raises ModelLoadError naming the path when it does not exist or its configs cannot be read."""
    path = Path(base_model).expanduser()
    if not str(base_model).strip() or not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        missing = [f"{part}/config.json" for part in ("unet", "vae", "text_encoder")
                   if not (path / part / "config.json").is_file()]
        if missing:
            raise ModelLoadError(f"{path}: not a diffusers model folder (no {missing[0]})")
        return _empty_models(path)
    header = _safetensors_header(path) if path.suffix.lower() in SINGLE_FILE_SUFFIXES else None
    embedded = header[0].get(CONFIGS_KEY) if header and not base_config else None
    with tempfile.TemporaryDirectory(prefix="seachange-configs-") as scratch:
        return _empty_models(_write_configs(path, embedded, Path(scratch)) if embedded else _config_dir(base_config))


def _empty_models(config_dir: Path) -> tuple[Any, Any, Any]:
    """UNet, VAE and text encoder built from the configs on the meta device (no memory, no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    return unet, vae, text_encoder


def _check_layout(path: Path, checkpoint: dict, config_dir: Path) -> None:
    """Every weight the configs need is in the file with the right shape; otherwise a clear ModelLoadError."""
    unet, vae, text_encoder = _empty_models(config_dir)
    expected = convert.diffusers_to_original(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                             unet.config, vae.config)
    missing = [key for key in expected if key not in checkpoint]
    if missing:
        kind = "a Stable Diffusion 1.x checkpoint" if config_dir == BUNDLED_SD15 else f"the model in {config_dir}"
        raise ModelLoadError(f"{path}: not {kind} in the original single-file layout: {len(missing)} of "
                             f"{len(expected)} weights missing, e.g. {', '.join(missing[:3])}")
    wrong = [(key, tuple(checkpoint[key].shape), tuple(tensor.shape)) for key, tensor in expected.items()
             if not _same_shape(checkpoint[key].shape, tensor.shape)]
    if wrong:
        key, found, wanted = wrong[0]
        raise ModelLoadError(f"{path}: {len(wrong)} weights have the wrong shape for the configs in {config_dir}, "
                             f"e.g. {key}: file has {list(found)}, expected {list(wanted)}")


def _same_shape(found: Any, wanted: Any) -> bool:
    """Equal, allowing trailing 1-dims (VAE attention saved as linear [C, C] instead of conv [C, C, 1, 1])."""
    def strip(shape: Any) -> tuple:
        dims = list(shape)
        while dims and dims[-1] == 1:
            dims.pop()
        return tuple(dims)
    return tuple(found) == tuple(wanted) or strip(found) == strip(wanted)


def _load_single_file(path: Path, checkpoint: dict, config_dir: Path, stated: tuple[str, str] | None) -> SDComponents:
    """UNet and VAE through diffusers' from_single_file, the text encoder through the same converter that
    StableDiffusionPipeline.from_single_file uses; all configs from `config_dir`, nothing downloaded. `stated`:
    the objective the file or its .yaml states, else the base config's or SD 1.x's."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    _check_layout(path, checkpoint, config_dir)
    common = {"config": str(config_dir), "local_files_only": True}  # weights land in the float32 modules
    try:
        unet = UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **common)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, checkpoint, subfolder="text_encoder",
                                                            **common)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"{path}: cannot load as SD 1.5 with the configs in {config_dir}: "
                             f"{_first_line(error)}") from error
    for name, module in (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder)):
        empty = [key for key, tensor in module.state_dict().items() if tensor.is_meta]
        if empty:
            raise ModelLoadError(f"{path}: the {name} was left without weights for {', '.join(empty[:3])}")
    scheduler_config = _scheduler_config(config_dir)
    stated = stated or _config_objective(config_dir, scheduler_config)
    return _components(unet, vae, text_encoder, _tokenizer(config_dir), scheduler_config, stated)


def _tokenizer(config_dir: Path) -> Any:
    from transformers import CLIPTokenizer

    folder = config_dir / "tokenizer" if (config_dir / "tokenizer").is_dir() else BUNDLED_SD15 / "tokenizer"
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder}: cannot load the tokenizer: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------------- saving


def save_model(components: SDComponents, path: str | os.PathLike, output_format: str, output_dtype: str,
               metadata: dict[str, str]) -> Path:
    """Write the model atomically and return where it went. "single_file": one original-layout .safetensors
    (suffix added if missing) with `metadata` in its header; "diffusers": a folder (+ metadata in
    seachange_metadata.json). Weights are converted to `output_dtype`; the caller's modules are not touched."""
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}, not {output_dtype!r}")
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise ValueError(f"metadata keys and values must be strings: {bad[:3]}")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if output_format == "single_file":
        if path.suffix.lower() != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        return _save_single_file(components, path, output_dtype, metadata)
    if output_format == "diffusers":
        return _save_diffusers_folder(components, path, output_dtype, metadata)
    raise ValueError(f"output_format must be 'single_file' or 'diffusers', not {output_format!r}")


def _converted(state_dict: dict, dtype_name: str) -> dict:
    """CPU copies (or the same tensors when nothing changes) in the wanted dtype; non-float tensors kept as is."""
    import torch

    dtype = getattr(torch, dtype_name)
    return {key: (value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu()).contiguous()
            for key, value in state_dict.items()}


def _save_single_file(components: SDComponents, path: Path, dtype: str, metadata: dict[str, str]) -> Path:
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; cannot write a single-file model there")
    state_dict = convert.diffusers_to_original(
        _converted(components.unet.state_dict(), dtype), _converted(components.vae.state_dict(), dtype),
        _converted(components.text_encoder.state_dict(), dtype), components.unet.config, components.vae.config)
    header = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
              "modelspec.implementation": "https://github.com/CompVis/stable-diffusion",
              CONFIGS_KEY: _configs_of(components), **metadata}
    return write_safetensors(path, state_dict, header)


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> Path:
    """Write `tensors` (name -> tensor) with the `metadata` header to the .safetensors file `path` atomically (a
    temporary file beside it, then renamed), with the mode the umask gives; returns `path`. IsADirectoryError
    when `path` is a folder."""
    from safetensors.torch import save_file

    from trainer.fields import give_umask_mode

    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; cannot write a .safetensors file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(tmp), metadata=metadata)
        give_umask_mode(tmp)  # save_file creates 0600 whatever the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _save_diffusers_folder(components: SDComponents, path: Path, dtype: str, metadata: dict[str, str]) -> Path:
    from trainer.fields import give_umask_mode

    if path.exists() and not _replaceable(path):
        raise FileExistsError(f"{path}: exists and is not a diffusers model folder; not overwriting it")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir()
        _write_diffusers_components(components, tmp, dtype)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        give_umask_mode(tmp)  # save_pretrained writes weights through safetensors' save_file: 0600
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old") if path.exists() else None
        if old:
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replaceable(path: Path) -> bool:
    """Only an earlier model folder (or an empty folder) may be replaced, never a user's other files."""
    return path.is_dir() and ((path / "model_index.json").is_file() or not any(path.iterdir()))


def _write_diffusers_components(components: SDComponents, folder: Path, dtype: str) -> None:
    import diffusers

    for name in ("unet", "vae", "text_encoder"):
        _copy_in_dtype(getattr(components, name), dtype).save_pretrained(folder / name, safe_serialization=True)
    _text_model_keys(folder / "text_encoder")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.noise_scheduler.save_pretrained(folder / "scheduler")

    def entry(obj: Any) -> list[str]:
        library = "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
        return [library, type(obj).__name__]
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": entry(components.noise_scheduler), "text_encoder": entry(components.text_encoder),
             "tokenizer": entry(components.tokenizer), "unet": entry(components.unet), "vae": entry(components.vae)}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _text_model_keys(folder: Path) -> None:
    """Rename a saved CLIP text encoder's weights to the `text_model.*` names every reader accepts. transformers 5
    writes `embeddings.*`, `encoder.*`, `final_layer_norm.*`; transformers 4.30 (A1111's pin) and ComfyUI's
    diffusers loader then find none of their names and run a randomly initialised CLIP with only a warning."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    renamed = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            tensors = {key if key.startswith("text_model.") else f"text_model.{key}": f.get_tensor(key)
                       for key in f.keys()}
            renamed.update({key: file.name for key in tensors})
        save_file(tensors, str(file), metadata=metadata)
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded save names each weight's file
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = renamed
        index.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _copy_in_dtype(module: Any, dtype: str) -> Any:
    """A new module of the same class and config whose weights are dtype copies of `module`'s (built on the
    meta device, so no second full-precision copy is allocated)."""
    import torch

    with torch.device("meta"):
        if hasattr(module, "from_config"):  # diffusers model
            copy = type(module).from_config(module.config)
        else:  # transformers model
            copy = type(module)(module.config)
    copy.load_state_dict(_converted(module.state_dict(), dtype), strict=True, assign=True)
    for name, buffer in module.named_buffers():  # non-persistent buffers (e.g. CLIP's position_ids)
        if name not in module.state_dict():
            _set_buffer(copy, name, buffer.detach().cpu())
    return copy


def _set_buffer(module: Any, dotted: str, value: Any) -> None:
    owner_name, _, name = dotted.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner.register_buffer(name, value, persistent=False)
