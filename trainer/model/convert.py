"""Key mapping between diffusers state dicts and the original single-file (LDM/CompVis) SD 1.5 layout. No UI here.

The original layout is what A1111, ComfyUI and diffusers' `from_single_file` read:
UNet under `model.diffusion_model.`, VAE under `first_stage_model.`, CLIP text encoder under
`cond_stage_model.transformer.text_model.`. The mapping is derived from the diffusers configs (number of blocks,
layers per block, which blocks have attention), so it serves real SD 1.5 and the tiny demo model alike.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers name → original name, inside one residual block
UNET_RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                     "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                    "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
UNET_TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_TOP_LEVEL = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}


def _split_param(rest: str) -> tuple[str, str]:
    """'conv1.weight' → ('conv1', 'weight')."""
    module, _, param = rest.rpartition(".")
    return module, param


def _rename(rest: str, names: Mapping[str, str], key: str) -> str:
    module, param = _split_param(rest)
    if module not in names:
        raise KeyError(f"no original-layout name for {key!r}")
    return f"{names[module]}.{param}"


def _layers_per_block(config: Mapping[str, Any]) -> int:
    layers = config["layers_per_block"]
    if isinstance(layers, int):
        return layers
    if len(set(layers)) != 1:
        raise ValueError(f"the original layout needs the same layers_per_block in every block, got {layers}")
    return int(layers[0])


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type


def unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The original name (without prefix) of one diffusers UNet2DConditionModel key."""
    layers = _layers_per_block(config)
    for name, original in UNET_TOP_LEVEL.items():
        if key.startswith(name + "."):
            return original + key[len(name):]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        block, kind, rest = int(parts[1]), parts[2], parts[3:]
        if kind == "downsamplers":  # downsamplers.0.conv.<param>
            return f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{'.'.join(rest[2:])}"
        index = 1 + block * (layers + 1) + int(rest[0])
        return _block_part(f"input_blocks.{index}", kind, ".".join(rest[1:]), key)
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        return _block_part(f"middle_block.{2 * index if kind == 'resnets' else 1}", kind, rest, key, slot=False)
    if parts[0] == "up_blocks":
        block, kind, rest = int(parts[1]), parts[2], parts[3:]
        if kind == "upsamplers":  # upsamplers.0.conv.<param>; follows the attention when the block has one
            slot = 2 if _has_attention(config["up_block_types"][block]) else 1
            return f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{'.'.join(rest[2:])}"
        index = block * (layers + 1) + int(rest[0])
        return _block_part(f"output_blocks.{index}", kind, ".".join(rest[1:]), key)
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def _block_part(base: str, kind: str, rest: str, key: str, slot: bool = True) -> str:
    """A resnet (slot 0) or a transformer (slot 1) inside one original input/middle/output block."""
    if kind == "resnets":
        return f"{base}{'.0' if slot else ''}.{_rename(rest, UNET_RESNET_NAMES, key)}"
    if kind == "attentions":  # the SpatialTransformer keeps diffusers' inner names
        return f"{base}{'.1' if slot else ''}.{rest}"
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def vae_key(key: str, config: Mapping[str, Any]) -> str:
    """The original name (without prefix) of one diffusers AutoencoderKL key."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    coder, _, rest = key.partition(".")
    if coder not in ("encoder", "decoder"):
        raise KeyError(f"no original-layout name for VAE key {key!r}")
    parts = rest.split(".")
    if parts[0] in VAE_TOP_LEVEL:
        return f"{coder}.{VAE_TOP_LEVEL[parts[0]]}.{'.'.join(parts[1:])}"
    if parts[0] == "mid_block":
        kind, index, inner = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"{coder}.mid.block_{index + 1}.{_rename(inner, VAE_RESNET_NAMES, key)}"
        return f"{coder}.mid.attn_{index + 1}.{_rename(inner, VAE_ATTENTION_NAMES, key)}"
    if parts[0] in ("down_blocks", "up_blocks"):
        block, kind, inner = int(parts[1]), parts[2], ".".join(parts[4:])
        if parts[0] == "up_blocks":  # the original decoder counts its levels from the bottom up
            block = len(config["up_block_types"]) - 1 - block
        level = f"{coder}.{'down' if parts[0] == 'down_blocks' else 'up'}.{block}"
        if kind == "resnets":
            return f"{level}.block.{parts[3]}.{_rename(inner, VAE_RESNET_NAMES, key)}"
        if kind in ("downsamplers", "upsamplers"):
            return f"{level}.{kind[:-2]}.{inner}"  # downsamplers.0.conv → downsample.conv
    raise KeyError(f"no original-layout name for VAE key {key!r}")


def text_encoder_key(key: str) -> str:
    """The original name (without prefix) of one transformers CLIPTextModel key (flat or under 'text_model.')."""
    return key.removeprefix("text_model.")


def _is_vae_attention_matrix(original_key: str) -> bool:
    module, param = _split_param(original_key)
    return ".mid.attn_" in module and param == "weight" and module.rsplit(".", 1)[-1] in ("q", "k", "v", "proj_out")


def unet_key_map(keys: Iterable[str], config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers UNet key → full original key."""
    return {key: UNET_PREFIX + unet_key(key, config) for key in keys}


def vae_key_map(keys: Iterable[str], config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers VAE key → full original key."""
    return {key: VAE_PREFIX + vae_key(key, config) for key in keys}


def text_encoder_key_map(keys: Iterable[str]) -> dict[str, str]:
    """CLIPTextModel key → full original key."""
    return {key: TEXT_ENCODER_PREFIX + text_encoder_key(key) for key in keys}


def diffusers_to_original(unet_sd: Mapping[str, Any], vae_sd: Mapping[str, Any], te_sd: Mapping[str, Any],
                          unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> dict[str, Any]:
    """One original-layout state dict from the three diffusers ones. Tensors are passed through, except the
    VAE's mid-block attention matrices, which become 1x1 conv weights ([C, C] → [C, C, 1, 1]) as in the original."""
    out: dict[str, Any] = {}
    for diffusers_key, original_key in unet_key_map(unet_sd, unet_config).items():
        out[original_key] = unet_sd[diffusers_key]
    for diffusers_key, original_key in vae_key_map(vae_sd, vae_config).items():
        tensor = vae_sd[diffusers_key]
        if _is_vae_attention_matrix(original_key) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[original_key] = tensor
    for diffusers_key, original_key in text_encoder_key_map(te_sd).items():
        out[original_key] = te_sd[diffusers_key]
    if len(out) != len(unet_sd) + len(vae_sd) + len(te_sd):
        raise ValueError("two diffusers keys map to the same original key; the configs do not match the weights")
    return out


def original_to_diffusers(original_sd: Mapping[str, Any], unet_keys: Iterable[str], vae_keys: Iterable[str],
                          te_keys: Iterable[str], unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
                          ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The reverse: (unet, vae, text encoder) state dicts with the given diffusers keys, from an original-layout
    dict. Raises KeyError naming the missing original keys. Extra original keys (EMA, position_ids...) are ignored."""
    maps = (unet_key_map(unet_keys, unet_config), vae_key_map(vae_keys, vae_config), text_encoder_key_map(te_keys))
    missing = [original for key_map in maps for original in key_map.values() if original not in original_sd]
    if missing:
        raise KeyError(f"{len(missing)} weights missing from the original-layout state dict, e.g. {missing[:3]}")
    results = []
    for key_map in maps:
        part = {}
        for diffusers_key, original_key in key_map.items():
            tensor = original_sd[original_key]
            if _is_vae_attention_matrix(original_key) and tensor.ndim == 4:
                tensor = tensor[:, :, 0, 0]
            part[diffusers_key] = tensor
        results.append(part)
    return results[0], results[1], results[2]


# Older single files (and diffusers' conversion script run on a transformers-5 folder) keep the CLIP text model
# one level up, without `text_model.`; A1111 (sd_models checkpoint_dict_replacements) and ComfyUI rename them.
LEGACY_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
LEGACY_TEXT_ENCODER_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.num_updates", "model_ema.decay")


def with_text_model_prefix(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """`checkpoint` with `cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}.*` renamed to
    `cond_stage_model.transformer.text_model.*` (the layout A1111, ComfyUI and from_single_file read); other keys
    and the tensors unchanged. Raises ValueError naming a key present under both names (which one is meant?)."""
    out: dict[str, Any] = {}
    for key, tensor in checkpoint.items():
        rest = key[len(LEGACY_TEXT_ENCODER_PREFIX):] if key.startswith(LEGACY_TEXT_ENCODER_PREFIX) else ""
        if rest.startswith(LEGACY_TEXT_ENCODER_PARTS):
            key = TEXT_ENCODER_PREFIX + rest
            if key in checkpoint:
                raise ValueError(f"the text encoder weight {key} is in the file twice, with and without "
                                 "`text_model.`; keep one of them")
        out[key] = tensor
    return out


def ema_key(unet_key_: str) -> str:
    """The name of the EMA copy of one original-layout UNet key, as the original LDM code (LitEma) writes it:
    `model_ema.` + the name below `model.` with its dots removed, e.g. model.diffusion_model.out.2.bias →
    model_ema.diffusion_modelout2bias."""
    return EMA_PREFIX + unet_key_.removeprefix("model.").replace(".", "")


def has_ema_weights(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the file holds EMA weights (`model_ema.*` beyond the num_updates and decay counters)."""
    return any(key.startswith(EMA_PREFIX) and key not in EMA_BOOKKEEPING for key in checkpoint)


def unet_weights(checkpoint: Mapping[str, Any], use_ema: bool) -> dict[str, Any]:
    """`checkpoint` without its `model_ema.*` keys; with `use_ema`, every `model.diffusion_model.*` tensor is
    replaced by its EMA copy. Raises KeyError naming the UNet keys that have no EMA copy (use_ema only)."""
    if use_ema:
        missing = [key for key in checkpoint if key.startswith(UNET_PREFIX) and ema_key(key) not in checkpoint]
        if missing:
            raise KeyError(f"{len(missing)} UNet weights have no EMA copy, e.g. {', '.join(missing[:3])}")
    return {key: checkpoint[ema_key(key)] if use_ema and key.startswith(UNET_PREFIX) else tensor
            for key, tensor in checkpoint.items() if not key.startswith(EMA_PREFIX)}
