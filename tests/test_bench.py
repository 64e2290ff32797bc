"""`python -m trainer bench` on the CPU: every run of the comparison is measured and tabulated (numbers are
recorded in benchmarks/README.md, never asserted)."""
from __future__ import annotations

import json

from trainer.tools.bench import TRAINER_BARE_STEP, format_table, run_bench, timed_windows


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


# ---- benchmarks/bench_estimate.py: the memory estimate before Start against a real run --------------------------

def test_bench_estimate_estimates_and_trains_the_lora_preset_with_the_real_loop(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_estimate
    rows = bench_estimate.estimate_rows(["sd15_lora"], [1], ["training.lora_rank=4"], real="cpu", model="tiny",
                                        steps=8, work=tmp_path, report=lambda line: None)
    (row,) = rows
    assert row["estimate_gib"] > 0 and set(row["parts_gib"]) == {"weights", "gradients", "optimizer_state", "ema",
                                                                 "activations", "sampling"}
    assert row["img_s"] > 0 and row["real_gib"] is None  # max_memory_allocated exists on a GPU only
    from safetensors.torch import load_file
    written = load_file(tmp_path / "sd15_lora-1" / "out.safetensors")  # the LoRA the run wrote, kohya's layout
    downs = [t for key, t in written.items() if key.endswith(".lora_down.weight")]
    assert downs and all(key.startswith("lora_unet_") for key in written) and {t.shape[0] for t in downs} == {4}
