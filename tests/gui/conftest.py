"""GUI fixtures: a large enough virtual display, a shared window, a fake training session, stub dialogs, the
screenshots folder."""
from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest

from gui_helpers import wait_for
from trainer import events as ev

MIN_SCREEN = (1280, 800)


@pytest.fixture(scope="session", autouse=True)
def gui_display(request, tmp_path_factory):
    """Keep the window's settings away from ~/.config, and make sure the display holds the whole window.

    pytest-xvfb starts an 800x600 display unless pyproject sets xvfb_width/xvfb_height; then the GUI tests
    start their own 1440x900 one (colour depth 24).
    """
    os.environ["SEACHANGE_CONFIG_DIR"] = str(tmp_path_factory.mktemp("seachange-config"))
    try:
        xvfb = request.getfixturevalue("xvfb")  # pytest-xvfb's display, None when it started none
    except pytest.FixtureLookupError:
        xvfb = None
    own = None
    too_small = xvfb is not None and (xvfb.width < MIN_SCREEN[0] or xvfb.height < MIN_SCREEN[1])
    if too_small or (xvfb is None and not os.environ.get("DISPLAY")):
        try:
            from pyvirtualdisplay import Display
            own = Display(size=(1440, 900), color_depth=24).start()
        except Exception as e:  # noqa: BLE001 - no Xvfb at all: the GUI cannot be tested here
            pytest.skip(f"no X display for the GUI tests (install xvfb): {e}")
    yield
    if own is not None:
        own.stop()


class StubDialogs:
    """Answers the window's questions without showing a dialog; records what was asked."""

    def __init__(self):
        self.confirm_answer = True
        self.choose_answers: list[str | None] = []  # answers to choose(), in order; None (or none left): cancel
        self.open_path = None
        self.save_path = None
        self.browse_result = None
        self.asked: list[tuple] = []

    def confirm(self, title, message):
        self.asked.append(("confirm", title, message))
        return self.confirm_answer

    def choose(self, title, message, options, cancel="Cancel"):
        """The next answer in choose_answers: the first option starting with it (so "Continue" picks "Continue
        from step 8 (epoch 2)"); an answer that matches no option fails the test."""
        self.asked.append(("choose", title, message, list(options)))
        answer = self.choose_answers.pop(0) if self.choose_answers else None
        if answer is None:
            return None
        matches = [option for option in options if option.startswith(answer)]
        assert matches, f"{answer!r} is not among the options {options}"
        return matches[0]

    def chosen(self) -> list[tuple]:
        """The choose() questions asked so far: (title, message, options)."""
        return [q[1:] for q in self.asked if q[0] == "choose"]

    def ask_open_preset(self):
        self.asked.append(("open",))
        return self.open_path

    def ask_save_preset(self):
        self.asked.append(("save",))
        return self.save_path

    def ask_open_spec(self, what):
        self.asked.append(("open spec", what))
        return self.open_path

    def ask_save_spec(self, what):
        self.asked.append(("save spec", what))
        return self.save_path

    def browse(self, kind, name, current):
        self.asked.append(("browse", kind, name, current))
        return self.browse_result


class FakeSession:
    """Stands in for TrainingSession: the test puts events; stop answers with a 'stopped' RunFinished."""

    made: list["FakeSession"] = []

    def __init__(self, preset, resume=None, fresh=False, allow_changed_data=False):
        self.preset = preset
        self.resume, self.fresh, self.allow_changed_data = resume, fresh, allow_changed_data
        self.events: queue.Queue = queue.Queue()
        self.sent: list[str] = []
        self.started = self.finished = False
        FakeSession.made.append(self)

    def start(self):
        self.started = True

    def send(self, name):
        self.sent.append(name)
        if name == ev.STOP:
            self.finish("stopped", step=3)

    def stop(self):
        self.send(ev.STOP)

    def finish(self, outcome, message="", step=0, output_path=None, bad_input=False, refusal=""):
        self.events.put(ev.RunFinished(outcome, message, output_path=output_path, step=step, bad_input=bad_input,
                                       refusal=refusal))
        self.finished = True

    @property
    def running(self):
        return self.started and not self.finished

    def join(self, timeout=None):
        return True


def pump(window, seconds: float = 0.15) -> None:
    """Let the window's after() loop run for a while (drains, redraws) without mainloop()."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        window.update()
        time.sleep(0.005)


def demo_preset(folder: Path):
    """The built-in demo preset (the defaults when it is missing) with every folder in `folder`: the workspace
    and output in folder/workspace, its other relative paths (demo/..., its cache) below `folder`. So no test
    reads or writes the demo/ or workspace/ a user may have in the checkout (`./run.sh` builds the demo there)."""
    from app.recent import DEFAULT_PRESET
    from trainer.config import Preset, load_preset
    preset = load_preset(DEFAULT_PRESET) if DEFAULT_PRESET.exists() else Preset()
    preset.general.workspace_dir = str(folder / "workspace")
    preset.model.output_path = str(folder / "workspace" / "model.safetensors")
    general, model = preset.general, preset.model
    for owner, name in [(general, "cache_dir"), (general, "demo_dir"), (model, "base_model"),
                        *((concept, "path") for concept in preset.concepts)]:
        value = getattr(owner, name)
        if value and not Path(value).expanduser().is_absolute():
            setattr(owner, name, str(folder / value))
    return preset


def show_demo_preset(window, folder: Path) -> None:
    """Show demo_preset(folder) in `window` as the built-in demo preset (loaded from its file, as on start)."""
    from app.recent import DEFAULT_PRESET
    window.set_preset(demo_preset(folder), DEFAULT_PRESET if DEFAULT_PRESET.exists() else None)


@pytest.fixture(scope="module")
def shared_window(gui_display, tmp_path_factory):
    """One fully built window per test module (building one takes about a second)."""
    from app.recent import RecentFiles
    from app.window import Window
    dialogs = StubDialogs()
    recent = RecentFiles(tmp_path_factory.mktemp("recent") / "recent.json")
    folder = tmp_path_factory.mktemp("demo-preset")
    window = Window(preset=demo_preset(folder), session_factory=FakeSession, dialogs=dialogs, recent=recent,
                    lazy=False)
    show_demo_preset(window, folder)
    window.update()
    yield window
    if not window.closed:
        window.close_now()


@pytest.fixture
def window(shared_window, tmp_path):
    """The shared window reset to the demo preset (or the defaults) with nothing running; its workspace, output
    and demo folders are in tmp_path (Start looks there for an earlier run)."""
    w = shared_window
    assert not w.runner.running, "a previous test left a run going"
    w.dialogs.__init__()
    for tab in (w.tabs["tools"], w.tabs["results"]):
        assert not tab.runner.running, "a previous test left a tool running"
        tab.runner.session_factory = tab.make_session
        tab.set_spec(tab.spec_cls())
        tab.clear()
    show_demo_preset(w, tmp_path)
    w.run_tab.clear()
    w.bottom.show_message("", "info")
    w.tabview.set("general")
    w.validate_now()
    w.update()
    FakeSession.made.clear()
    return w


@pytest.fixture
def sessions():
    """The FakeSessions made so far in this test, oldest first."""
    return FakeSession.made


@pytest.fixture
def fake_session():
    """The FakeSession class (a session factory for tool tabs too: it takes any spec)."""
    return FakeSession


@pytest.fixture(name="pump")
def pump_fixture():
    return pump


@pytest.fixture
def make_window(gui_display, tmp_path):
    """Make a separate window (fake sessions, stub dialogs) for tests that close or otherwise consume it."""
    from app.recent import RecentFiles
    from app.window import Window
    made = []

    def make(**kw):
        kw.setdefault("session_factory", FakeSession)
        kw.setdefault("dialogs", StubDialogs())
        kw.setdefault("recent", RecentFiles(tmp_path / "recent.json"))
        kw.setdefault("lazy", False)  # every tab built: a test may reach any of them at once (lazy=True to test that)
        demo = "preset" not in kw and "preset_path" not in kw
        if demo:  # the demo preset, its folders in tmp_path (Start looks there for earlier runs)
            kw["preset"] = demo_preset(tmp_path)
        window = Window(**kw)
        if demo:
            show_demo_preset(window, tmp_path)
        window.update()
        made.append(window)
        return window
    yield make
    for window in made:
        if not window.closed:
            if window.runner.session is not None:
                window.runner.session.finish("stopped")
            window.close_now()


@pytest.fixture
def rich_preset(tmp_path: Path):
    """A valid preset where every scalar field differs from its default; two concepts and three prompts."""
    import typing
    from dataclasses import fields, is_dataclass

    from trainer.config import ConceptConfig, Preset, SamplePrompt, validate

    def perturb(obj, tag):
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            hint, meta, value = hints[f.name], f.metadata, getattr(obj, f.name)
            if meta.get("choices"):
                others = [c for c in meta["choices"] if c != value]
                setattr(obj, f.name, others[-1])
            elif hint is bool:
                setattr(obj, f.name, not value)
            elif hint is int:
                setattr(obj, f.name, min(value + 8, meta["max"]) if meta.get("max") is not None else value + 8)
            elif hint is float:
                hi = meta.get("max") if meta.get("max") is not None else value + 1
                setattr(obj, f.name, value + (hi - value) * 0.37 if hi > value else value / 3)
            elif hint is str:
                setattr(obj, f.name, str(tmp_path / f"{tag}-{f.name}") if meta.get("kind") else f"{tag} {f.name}")
            elif is_dataclass(value):
                perturb(value, tag)

    preset = Preset()
    perturb(preset, "x")
    preset.training.resolution = "512,640"
    preset.training.fused_backward = False  # on, it needs gradient accumulation 1 and no clipping
    preset.training.max_token_length = 150  # 75, 150 or 225 only
    preset.training.method = "lora"  # every method's fields shown; a LoRA is written as one .safetensors
    preset.training.embedding_placeholder = "xqzword"  # a word CLIP does not know
    preset.training.betas, preset.training.eps = "0.8,0.95,0.99", "1e-7"  # as many as the optimizer takes
    preset.model.output_path += ".safetensors"
    preset.concepts = [ConceptConfig(), ConceptConfig()]
    perturb(preset.concepts[0], "c0")
    perturb(preset.concepts[1], "c1")
    preset.concepts[1].caption_source = "single"
    preset.sampling.prompts = [SamplePrompt(), SamplePrompt(), SamplePrompt()]
    for i, prompt in enumerate(preset.sampling.prompts):
        perturb(prompt, f"p{i}")
        prompt.width, prompt.height = 64 + 8 * i, 96
    problems = validate(preset)
    assert not problems, problems
    return preset


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """The folder the screenshot tests save into: $SEACHANGE_SCREENSHOTS for a person who wants to look at them
    (tests/screenshots is gitignored for that), else a temporary folder."""
    keep = os.environ.get("SEACHANGE_SCREENSHOTS")
    return Path(keep).expanduser() if keep else tmp_path / "screenshots"


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    return wait_for
