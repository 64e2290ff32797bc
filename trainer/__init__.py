"""SeaChange training engine: fine-tunes Stable Diffusion 1.5. Must not touch the UI (no tkinter here)."""
import logging

# bitsandbytes, imported by PEFT and diffusers, warns on CPUs with AVX512-BF16 that an optional 4-bit inference
# kernel ("pip install kernels") is missing: SeaChange runs no 4-bit layers, so the advice only misleads.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
