"""SD 1.5 models: loading and saving each format, the model as it trains, LoRA and embedding files. Must not
touch the UI."""
