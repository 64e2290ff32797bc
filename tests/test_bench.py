"""`python -m trainer bench` on the CPU: every run of the comparison is measured and tabulated (numbers are
recorded in benchmarks/README.md, never asserted)."""
from __future__ import annotations

import json

from trainer.bench import TRAINER_BARE_STEP, format_table, run_bench, timed_windows


def test_timed_windows_take_the_median_after_warmup():
    stamps = [0, 5, 6, 7, 8, 9, 10, 12]  # one slow warm-up step, then a step per second, one slow window
    assert timed_windows(stamps, warmup=1, window=2) == 1.0


def test_cpu_bench_compares_reference_bare_loop_and_the_trainer(tmp_path):
    # The low-VRAM preset as it is: bf16 weights, stochastic rounding, fused back pass, 8-bit AdamW, checkpointing.
    written = tmp_path / "bench.json"
    # Two batch sizes: each trainer run starts over in the same work folder, as the GPU bench's 1/4/16 do.
    result = run_bench("cpu", "tiny", [1, 2], ["sd15_finetune_lowvram"], steps=8, work=tmp_path / "work",
                       log=lambda *_: None, json_path=written)
    names = [(r["name"], r["batch"]) for r in result["rows"]]
    assert names == [(name, batch) for batch in (1, 2) for name in
                     ("reference", "bare loop", TRAINER_BARE_STEP, "sd15_finetune_lowvram")]
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["img_s"] > 0 and row["vs_reference"] > 0
    assert result["rows"][2]["step_time_vs_bare"] > 0 and result["rows"][6]["step_time_vs_bare"] > 0
    assert json.loads(written.read_text()) == result  # written after every run; the last write holds them all
    table = format_table(result)
    assert "sd15_finetune_lowvram" in table and "img/s" in table


# ---- benchmarks/bench_memory.py: the fake-tensor memory estimate and its real-trainer LoRA run --------------

def _bench_memory():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_memory
    return bench_memory


def _tiny_unet_with_adapter(rank: int, alpha: float):
    """The tiny demo UNet (real tensors) with trainer.lora's adapter put on as the trainer puts it: the sizes the
    estimate must find on its meta-device copy."""
    from trainer import lora
    from trainer.demo import build_tiny_components
    unet = build_tiny_components(seed=0).unet
    config = dict(unet.config)
    lora.add_adapter(unet, "unet", "lora", lora.target_layers(unet, "unet", 0, rank, alpha, 1.0), 0.0)
    adapter = sum(p.numel() for p in lora.adapter_parameters(unet))
    return config, adapter, sum(p.numel() for p in unet.parameters()) - adapter


def test_lora_memory_estimate_counts_a_frozen_bf16_unet_a_float32_adapter_and_its_adam_state():
    bench_memory = _bench_memory()
    config, adapter, base = _tiny_unet_with_adapter(rank=4, alpha=2.0)
    lora = bench_memory.estimate(config, method="lora", rank=4, alpha=2.0, latent_side=16)
    assert (lora["trained_parameters"], lora["frozen_parameters"]) == (adapter, base)
    kinds = lora["by_kind_bytes"]
    assert kinds["Parameter"] == 2 * base + 4 * adapter  # bf16 base weights, float32 adapter
    assert 8 * adapter <= kinds["Optstate"] < 9 * adapter  # AdamW's two float32 moments (and its step counts)
    assert kinds["Activation"] > 0 and kinds["Total"] >= sum(v for k, v in kinds.items() if k != "Total")
    full = bench_memory.estimate(config, method="full", latent_side=16)  # the low-VRAM preset's full fine-tune
    assert (full["trained_parameters"], full["frozen_parameters"]) == (base, 0)
    assert full["by_kind_bytes"]["Parameter"] == 2 * base  # bf16 weights; the float32 proxies exist per bucket
    assert kinds["Total"] < full["by_kind_bytes"]["Total"]


def test_lora_memory_estimate_checkpointing_and_8bit_state_save_memory():
    bench_memory = _bench_memory()
    config, _, _ = _tiny_unet_with_adapter(rank=16, alpha=8.0)
    common = dict(method="lora", rank=16, alpha=8.0, latent_side=16)
    kept = bench_memory.estimate(config, checkpointing=False, **common)["by_kind_bytes"]
    recomputed = bench_memory.estimate(config, **common)["by_kind_bytes"]
    assert recomputed["Activation"] < kept["Activation"] and recomputed["Total"] < kept["Total"]
    eight_bit = bench_memory.estimate(config, optimizer="adamw8bit", **common)
    assert eight_bit["optimizer"] == "adamw8bit"
    # bitsandbytes keeps 8-bit moments for tensors of 4096+ elements only (float32 ones below): on the tiny model
    # that is the widest layers' adapters (ff.net.0.proj's 256 x 16 up matrix), a part of the state
    assert eight_bit["by_kind_bytes"]["Optstate"] < 0.9 * recomputed["Optstate"]


def test_bench_memory_real_run_trains_the_lora_preset_with_the_real_loop(tmp_path):
    bench_memory = _bench_memory()
    preset = bench_memory.bench_preset("lora", None, True, 16, 8.0, False)
    training = preset["training"]
    assert (training["method"], training["lora_rank"], training["lora_alpha"], training["lora_conv_rank"],
            training["optimizer"], training["weight_dtype"], training["mixed_precision"],
            training["gradient_checkpointing"]) == ("lora", 16, 8.0, 0, "adamw", "float32", "bf16", True)
    result = bench_memory.real_run("cpu", "tiny", preset, batch=1, steps=8, work=tmp_path)
    from safetensors.torch import load_file
    written = load_file(tmp_path / "run" / "out.safetensors")  # the LoRA the run wrote, in kohya's layout
    downs = [t for key, t in written.items() if key.endswith(".lora_down.weight")]
    assert downs and all(key.startswith("lora_unet_") for key in written)
    assert {t.shape[0] for t in downs} == {16}
    assert result["img_s"] > 0 and result["peak_gib"] is None  # max_memory_allocated exists on a GPU only
