"""LoRA-family adapters on SD 1.5 (LoRA, LoCon, LoHa, LoKr), built with PEFT, and their files in kohya's layout,
the one A1111, ComfyUI and diffusers load. No UI here.

Which layers get an adapter follows kohya's sd-scripts networks/lora.py for SD 1.x: every Linear and 1x1 Conv2d
inside the UNet's Transformer2DModel blocks (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj,
ff.net.2) and inside the text encoder's CLIPAttention and CLIPMLP (q/k/v/out_proj, fc1, fc2); with a conv rank
(LoCon) also the layers of ResnetBlock2D, Downsample2D and Upsample2D, the 3x3 convolutions at the conv rank and
alpha, the Linear and 1x1 ones (time_emb_proj, conv_shortcut) at the linear rank and alpha.

The file (kohya's layout): one module name per adapted layer, `lora_unet_` or `lora_te_` + the layer's diffusers /
transformers path with "." replaced by "_", and per module the tensors of its kind:
- lora (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): `.lora_down.weight` (r, in[, kh, kw]),
  `.lora_up.weight` (out, r[, 1, 1]), `.alpha` (0-d); the weight change is up @ down * alpha / r;
- loha (LyCORIS; Hyeon-Woo et al. 2022, "FedPara"): `.hada_w1_a` (out, r), `.hada_w1_b` (r, in*kh*kw), `.hada_w2_a`,
  `.hada_w2_b`, `.alpha`; the change is (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r;
- lokr (LyCORIS; Yeh et al. 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model
  Evaluation"): `.lokr_w1` or `.lokr_w1_a/.lokr_w1_b`, `.lokr_w2` or `.lokr_w2_a/.lokr_w2_b`, `.alpha`; the change is
  kron(w1, w2) * alpha / r when a factor is low-rank, and kron(w1, w2) when both are full (ComfyUI's and A1111's
  rule), so a file with two full factors carries PEFT's alpha / r inside w1.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.errors import InputError

ADAPTER = "default"  # PEFT's adapter name; one adapter per model
PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
FILE_SUFFIXES = {  # the tensors of one module in a file, per kind
    "lora": ("lora_down.weight", "lora_up.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}
KOHYA_NETWORK_MODULE = {"lora": "networks.lora", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}


@dataclass
class LayerSpec:
    """One adapted layer: its path in the model, whether it takes the conv rank, and the rank and alpha."""
    name: str
    conv: bool
    rank: int
    alpha: float


def target_layers(model: torch.nn.Module, part: str, conv_rank: int, rank: int, alpha: float,
                  conv_alpha: float) -> list[LayerSpec]:
    """The layers of `model` (part "unet" or "text_encoder") that get an adapter, as kohya's networks/lora.py
    picks them for SD 1.x (module docstring); conv_rank 0 leaves the ResNet and resampling blocks out."""
    blocks = {"unet": UNET_BLOCKS + (UNET_CONV_BLOCKS if conv_rank else ()), "text_encoder": TEXT_ENCODER_BLOCKS}[part]
    specs, seen = [], set()
    for block_name, block in model.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child_name, child in block.named_modules():
            name = f"{block_name}.{child_name}" if child_name else block_name
            if name in seen or not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            seen.add(name)
            wide = isinstance(child, torch.nn.Conv2d) and child.kernel_size != (1, 1)
            specs.append(LayerSpec(name, wide, conv_rank if wide else rank, conv_alpha if wide else alpha))
    return specs


def peft_config(kind: str, specs: list[LayerSpec], dropout: float):
    """The PEFT config that puts a `kind` ("lora" | "loha" | "lokr") adapter on exactly the layers in `specs`,
    each at its rank and alpha. dropout: on the adapter's input for lora; on its rank for loha and lokr (PEFT's
    rank_dropout, as LyCORIS)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig
    first = specs[0]
    targets = [spec.name for spec in specs]
    ranks = {re.escape(s.name): s.rank for s in specs if s.rank != first.rank}
    alphas = {re.escape(s.name): s.alpha for s in specs if s.alpha != first.alpha}
    common = dict(r=first.rank, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas)
    if kind == "lora":
        return LoraConfig(lora_alpha=first.alpha, lora_dropout=dropout, **common)
    if kind == "loha":
        return LoHaConfig(alpha=first.alpha, rank_dropout=dropout, **common)
    if kind == "lokr":
        return LoKrConfig(alpha=first.alpha, rank_dropout=dropout, **common)
    raise ValueError(f"training.lora_type: one of lora, loha, lokr, not {kind!r}")


def add_adapter(model: torch.nn.Module, part: str, kind: str, specs: list[LayerSpec], dropout: float) -> None:
    """Put a fresh adapter on `model` in place (PEFT's inject_adapter_in_model): a lora's up matrix starts at zero,
    so the model's output is unchanged until it trains. The base weights are frozen; the adapter's float32
    parameters require gradients."""
    from peft import inject_adapter_in_model
    if not specs:
        raise InputError(f"training.method: the {part} has no layer a LoRA can adapt (no {', '.join(UNET_BLOCKS)} "
                         "blocks): not an SD 1.5 model")
    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(kind, specs, dropout), model, adapter_name=ADAPTER)
    for param in adapter_parameters(model):
        param.data = param.data.float()
        param.requires_grad_(True)


def tuner_layers(model: torch.nn.Module):
    """(path, PEFT tuner layer) of every adapted layer of `model`, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def adapter_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's parameters in `model` (every layer's, in module order)."""
    params = []
    for _, layer in tuner_layers(model):
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr)
            if ADAPTER in holder:
                entry = holder[ADAPTER]
                params += list(entry.parameters()) if isinstance(entry, torch.nn.Module) else [entry]
    return params


def kohya_name(part: str, path: str) -> str:
    """A layer's module name in kohya's layout: lora_unet_ or lora_te_ + its path with "." as "_". Text encoder
    paths are transformers 4's CLIPTextModel paths (text_model.encoder...), the ones kohya's files use; newer
    transformers drop the text_model level."""
    if part == "text_encoder" and not path.startswith("text_model."):
        path = f"text_model.{path}"
    return PREFIXES[part] + path.replace(".", "_")


def _kind(layer) -> str:
    names = set(layer.adapter_layer_names)
    return "lora" if "lora_A" in names else "loha" if "hada_w1_a" in names else "lokr"


def _layer_tensors(layer) -> dict:
    """The adapter tensors of one PEFT layer by their suffix in kohya's layout (FILE_SUFFIXES): the parameters
    themselves, not copies."""
    if _kind(layer) == "lora":
        return {"lora_down.weight": layer.lora_A[ADAPTER].weight, "lora_up.weight": layer.lora_B[ADAPTER].weight}
    return {attr: getattr(layer, attr)[ADAPTER] for attr in FILE_SUFFIXES[_kind(layer)]
            if ADAPTER in getattr(layer, attr)}


def _alpha(layer) -> float:
    return float(layer.lora_alpha[ADAPTER] if _kind(layer) == "lora" else layer.alpha[ADAPTER])


def kohya_tensors(model: torch.nn.Module, part: str) -> dict[str, torch.Tensor]:
    """The adapter of `model` (part "unet" | "text_encoder") as kohya-layout tensors (module docstring), float32
    on the CPU. The weight change they describe equals PEFT's get_delta_weight."""
    out = {}
    for name, layer in tuner_layers(model):
        key, kind, alpha = kohya_name(part, name), _kind(layer), _alpha(layer)
        found = {suffix: t.detach().float().cpu().contiguous() for suffix, t in _layer_tensors(layer).items()}
        if kind == "lokr" and "lokr_w1" in found and "lokr_w2" in found:  # loaders apply no alpha / r then
            found["lokr_w1"] = found["lokr_w1"] * layer.scaling[ADAPTER]
        for suffix, tensor in found.items():
            out[f"{key}.{suffix}"] = tensor
        out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def load_kohya_tensors(model: torch.nn.Module, part: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy kohya-layout tensors (the inverse of kohya_tensors) into the adapter on `model`. Raises InputError
    naming `source` and the module when a module of the adapter is missing from the tensors, or a shape or alpha
    differs from the adapter's (another rank, alpha or type)."""
    for name, layer in tuner_layers(model):
        key, kind, targets = kohya_name(part, name), _kind(layer), _layer_tensors(layer)
        alpha = tensors.get(f"{key}.alpha")
        if kind == "lokr" and "lokr_w2" in targets:
            alpha = None  # two full factors: loaders apply no alpha, and kohya_tensors put the scale into w1
        if alpha is not None and abs(float(alpha) - _alpha(layer)) > 1e-6 * max(1.0, abs(_alpha(layer))):
            raise InputError(f"model.lora_weights: {source} has alpha {float(alpha):g} at {key}, the LoRA settings "
                             f"{_alpha(layer):g}: set training.lora_alpha (or lora_conv_alpha) to the file's")
        for suffix, param in targets.items():
            found = tensors.get(f"{key}.{suffix}")
            if found is None:
                raise InputError(f"model.lora_weights: {source} has no {key}.{suffix}: it is not a {kind} with "
                                 "these layers; check training.lora_type, lora_conv_rank and train_text_encoder")
            if tuple(found.shape) != tuple(param.shape):
                raise InputError(f"model.lora_weights: {source}: {key}.{suffix} is {tuple(found.shape)}, the LoRA "
                                 f"settings make {tuple(param.shape)}; set training.lora_rank (or lora_conv_rank) "
                                 "to the file's rank")
            value = found.to(param.dtype)
            if kind == "lokr" and suffix == "lokr_w1" and "lokr_w2" in targets:
                value = value / layer.scaling[ADAPTER]
            with torch.no_grad():
                param.copy_(value)


def merge_adapter(model: torch.nn.Module, strength: float) -> None:
    """Add `strength` times each adapter's weight change to its base layer and take the adapters out, in place:
    `model` becomes the plain model (its state dict the base model's keys) with the LoRA merged in."""
    for name, layer in tuner_layers(model):
        base = layer.get_base_layer()
        with torch.no_grad():
            base.weight += strength * layer.get_delta_weight(ADAPTER).to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)


@dataclass
class LoraFile:
    """What a kohya-layout file holds: its kind, its module names per part, rank and alpha per module
    (linear and conv may differ), and all its tensors."""
    kind: str
    parts: dict[str, set[str]] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def read_lora_file(path: str | Path, what: str = "model.lora_weights") -> LoraFile:
    """Read and identify a LoRA file for SD 1.5 in kohya's layout. Raises InputError naming `what` and the file
    when it cannot be read, or is in another layout or for another model: SDXL (lora_te1_/lora_te2_ keys or
    LDM block names), diffusers' or PEFT's own layout (lora_A/lora_B), a file of mixed kinds."""
    from safetensors.torch import load_file
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what}: {path} does not exist (choose a LoRA .safetensors file)")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - any read failure means the same to the user
        raise InputError(f"{what}: {path} is not a readable .safetensors file ({str(error).splitlines()[0]})") \
            from error
    keys = list(tensors)
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
        raise InputError(f"{what}: {path} is a LoRA for SDXL (it has lora_te1_/lora_te2_ keys), not for SD 1.5")
    if any(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", k) for k in keys):
        raise InputError(f"{what}: {path} names the UNet's layers as SDXL LoRAs do (lora_unet_input_blocks_...): "
                         "a LoRA for SDXL or another model, not SD 1.5")
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        raise InputError(f"{what}: {path} is in diffusers'/PEFT's layout (lora_A/lora_B), not kohya's; SeaChange "
                         "continues kohya-layout files (as SeaChange, kohya and OneTrainer write them)")
    found = LoraFile(kind="")
    for key in keys:
        module, _, suffix = key.partition(".")
        part = next((p for p, prefix in PREFIXES.items() if module.startswith(prefix)), None)
        kind = next((k for k, suffixes in FILE_SUFFIXES.items() if suffix in suffixes), None)
        if part is None or (kind is None and suffix != "alpha"):
            raise InputError(f"{what}: {path} holds {key}, which is not a key of an SD 1.5 LoRA in kohya's layout")
        found.parts.setdefault(part, set()).add(module)
        if kind and found.kind and kind != found.kind:
            raise InputError(f"{what}: {path} mixes {found.kind} and {kind} modules; SeaChange trains one kind")
        found.kind = kind or found.kind
    for module in set().union(*found.parts.values()) if found.parts else ():
        found.alphas[module] = float(tensors[f"{module}.alpha"]) if f"{module}.alpha" in tensors else None
        found.ranks[module] = _file_rank(module, tensors)
    if not found.kind:
        raise InputError(f"{what}: {path} holds no LoRA weights")
    width = {tuple(t.shape)[1] for k, t in tensors.items() if "attn2_to_k" in k and k.endswith(
        ("lora_down.weight", "hada_w1_b", "hada_w2_b"))}
    other = {1024: "SD 2.x", 1280: "SDXL", 2048: "SDXL"}  # the text width other models' cross-attention reads
    if width & set(other):
        wide = max(width & set(other))
        raise InputError(f"{what}: {path} is a LoRA for {other[wide]} (its cross-attention reads {wide} values per "
                         "token; SD 1.5 reads 768)")
    found.tensors = tensors
    return found


def _file_rank(module: str, tensors: dict) -> int | None:
    """A module's rank in a file: the first axis of its low-rank down factor; None for a lokr of full factors."""
    for suffix, axis in (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w1_b", 0), ("lokr_w2_b", 0)):
        if f"{module}.{suffix}" in tensors:
            return int(tensors[f"{module}.{suffix}"].shape[axis])
    return None


def lora_metadata(training, kind_of_network: str, *, title: str, resolution: str, prediction: str, step: int,
                  base_model: str, text_encoder: bool) -> dict[str, str]:
    """The header kohya's train_network.py and sai_model_spec.py write (the keys A1111's and ComfyUI's LoRA
    lists show), for a LoRA of `kind_of_network` trained on SD 1.x."""
    args = {"algo": kind_of_network} if kind_of_network != "lora" else {}
    if training.lora_conv_rank:
        args.update(conv_dim=str(training.lora_conv_rank), conv_alpha=str(training.lora_conv_alpha))
    return {
        "ss_network_module": KOHYA_NETWORK_MODULE[kind_of_network], "ss_network_dim": str(training.lora_rank),
        "ss_network_alpha": str(training.lora_alpha), "ss_network_args": json.dumps(args),
        "ss_network_dropout": str(training.lora_dropout),
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_sd_model_name": Path(base_model).name,
        "ss_resolution": f"({resolution}, {resolution})", "ss_steps": str(step),
        "ss_learning_rate": str(training.learning_rate), "ss_unet_lr": str(training.learning_rate),
        "ss_text_encoder_lr": str(training.text_encoder_learning_rate or training.learning_rate),
        "ss_network_train_unet_only": str(not text_encoder), "ss_output_name": title,
        "ss_optimizer": training.optimizer, "ss_lr_scheduler": training.lr_scheduler,
        "ss_mixed_precision": training.mixed_precision, "ss_max_token_length": str(training.max_token_length),
        "ss_gradient_checkpointing": str(training.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(training.gradient_accumulation_steps),
        "ss_noise_offset": str(training.noise_offset), "ss_min_snr_gamma": str(training.min_snr_gamma),
        "ss_zero_terminal_snr": str(training.zero_terminal_snr),
        "ss_loss_type": {"mse": "l2"}.get(training.loss_type, training.loss_type),  # kohya's name for mse: l2
        "ss_huber_c": str(training.huber_c), "ss_huber_schedule": training.huber_schedule,
        "ss_debiased_estimation": str(training.debiased_estimation),
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers", "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}", "modelspec.prediction_type": prediction,
    }


def apply_lora_file(components, path: str | Path, strength: float, what: str = "model.lora_weights") -> LoraFile:
    """Merge a kohya-layout LoRA file for SD 1.5 (read_lora_file) into `components` (models.SDComponents) at
    `strength`, in place: each module's rank and alpha are the file's, so any SD 1.5 LoRA of the three kinds
    applies, not only SeaChange's. Returns what the file holds. Raises InputError naming `what` and the file for
    a file of another model or layout, or a module the model does not have or whose shape differs."""
    found = read_lora_file(path, what)
    for part, modules in found.parts.items():
        model = getattr(components, part)
        candidates = {kohya_name(part, spec.name): spec
                      for spec in target_layers(model, part, 1, 1, 1.0, 1.0)}
        unknown = sorted(modules - set(candidates))
        if unknown:
            raise InputError(f"{what}: {path} adapts {unknown[0]}, which this SD 1.5 model does not have")
        specs = []
        for m in sorted(modules):
            rank = found.ranks[m]
            if rank is None:  # a lokr of two full factors: a rank that keeps w2 full, and alpha / rank = 1
                rank = max(found.tensors[f"{m}.lokr_w2"].shape[:2])
                found.alphas[m] = None
            alpha = found.alphas[m] if found.alphas[m] is not None else float(rank)  # no alpha: scale 1
            specs.append(LayerSpec(candidates[m].name, candidates[m].conv, rank, alpha))
        add_adapter(model, part, found.kind, specs, 0.0)
        load_kohya_tensors(model, part, found.tensors, str(path))
        merge_adapter(model, strength)
    return found
