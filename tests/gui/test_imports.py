"""The window imports no torch/diffusers/transformers at load; the engine imports no tkinter (subprocesses)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_app_imports_no_heavy_libraries_at_module_load():
    loaded = run_python(
        "import json, sys, pkgutil, importlib, app\n"
        "import app.window, app.__main__\n"
        "for m in pkgutil.walk_packages(app.__path__, 'app.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'accelerate'))))")
    assert loaded == []


def test_trainer_imports_no_tkinter():
    loaded = run_python(
        "import json, sys, pkgutil, importlib, trainer\n"
        "for m in pkgutil.walk_packages(trainer.__path__, 'trainer.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tkinter', '_tkinter', 'customtkinter', 'app'))))")
    assert loaded == []


def test_validating_and_loading_presets_imports_no_heavy_libraries():
    """The window validates the preset at every edit: every method's checks (a new word against CLIP's
    vocabulary, LoRA paths) stay torch-free."""
    loaded = run_python(
        "import json, sys\n"
        "from trainer.config import Preset, validate, load_preset\n"
        "for method in ('full', 'lora', 'embedding'):\n"
        "    p = Preset(); p.training.method = method; p.training.embedding_placeholder = 'cat'\n"
        "    p.model.lora_weights = 'x.safetensors'; validate(p, check_paths=True)\n"
        "for name in ('sd15_lora', 'sd15_embedding'):\n"
        "    load_preset(f'presets/{name}.json')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'accelerate'))))")
    assert loaded == []
