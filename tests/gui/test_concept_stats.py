"""The concepts tab shows the engine's statistics of the selected concept, computed off the Tk thread."""
from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from app.widgets import ERROR, WARNING
from gui_helpers import screenshot, settled, type_into, wait_for


def make_concept(folder: Path, broken: int = 1) -> Path:
    """Three images of different aspect ratios (one without a .txt caption) and `broken` corrupt .png files."""
    folder.mkdir()
    for name, size in (("square", (64, 64)), ("wide", (128, 48)), ("tall", (48, 128))):
        Image.new("RGB", size, "red").save(folder / f"{name}.png")
    (folder / "square.txt").write_text("a red square\n")
    (folder / "wide.txt").write_text("a long red band lying on its side\n")
    for i in range(broken):
        (folder / f"broken{i or ''}.png").write_bytes(b"this is not a png at all")
    return folder


def select_new_concept(window, folder) -> object:
    tab = window.tabs["concepts"]
    window.tabview.set("concepts")
    type_into(window.form.widget_for("general.demo_dir"), "")
    tab.add_button.invoke()
    type_into(window.form.widget_for(f"concepts.{tab.selected}.path"), str(folder))
    window.update()
    return tab


def test_selected_concept_shows_usable_skipped_captions_and_buckets(window, tmp_path):
    folder = make_concept(tmp_path / "cats")
    tab = select_new_concept(window, folder)
    type_into(window.form.widget_for(f"concepts.{tab.selected}.caption"), "a red shape")
    wait_for(window, lambda: settled(tab, folder) and "“a red shape”" in tab.stats_panel.missing.cget("text"),
             "the statistics")
    panel = tab.stats_panel
    summary = panel.summary.cget("text")
    assert "3 of 4 images usable" in summary and "1 skipped" in summary
    assert "1 without a caption" in summary
    assert panel.skipped_box.winfo_ismapped()
    skipped = panel.skipped_box.get("1.0", "end")
    assert "broken.png" in skipped and "not an image" in skipped
    missing = panel.missing.cget("text")
    assert "1 image without a caption" in missing and "tall.png" in missing
    assert "It trains on the concept caption “a red shape”" in missing
    assert "Captions: 3–8 words" in panel.captions.cget("text")
    rows = panel.chart.bar_rows()
    assert len(rows) >= 2 and sum(count for _, count in rows) == 3
    drawn = {panel.chart.itemcget(item, "text") for item in panel.chart.find_withtag("label")}
    assert drawn == {label for label, _ in rows} and all("×" in label for label in drawn)
    assert panel.chart.winfo_ismapped() and panel.status.cget("text") == ""


def test_missing_folder_shows_its_error(window, tmp_path):
    tab = select_new_concept(window, tmp_path / "nowhere")
    wait_for(window, lambda: settled(tab, tmp_path / "nowhere"), "the statistics")
    assert "does not exist" in tab.stats.cget("text")
    assert tab.stats.cget("text_color") == ERROR
    assert not tab.stats_panel.chart.winfo_ismapped() and not tab.stats_panel.skipped_box.winfo_ismapped()


def test_many_skipped_files_end_in_more(window, tmp_path, monkeypatch):
    import app.tabs.concept_stats as concept_stats
    monkeypatch.setattr(concept_stats, "SKIPPED_LISTED", 2)
    folder = make_concept(tmp_path / "junk", broken=3)
    tab = select_new_concept(window, folder)
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    lines = tab.stats_panel.skipped_box.get("1.0", "end").strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "+1 more"
    assert "3 skipped" in tab.stats.cget("text")


def test_editing_the_folder_recomputes_and_ignores_stale_results(window, tmp_path):
    first = make_concept(tmp_path / "first")
    second = tmp_path / "second"
    second.mkdir()
    Image.new("RGB", (64, 64), "blue").save(second / "only.png")
    (second / "only.txt").write_text("blue")
    tab = select_new_concept(window, first)
    window.update()
    tab.refresh_stats()  # a result for the first folder is on its way ...
    type_into(window.form.widget_for(f"concepts.{tab.selected}.path"), str(second))  # ... and is now stale
    wait_for(window, lambda: settled(tab, second), "the second folder's statistics")
    time.sleep(0.3)
    for _ in range(20):
        window.update()
    assert tab.stats_panel.shown["path"] == str(second)
    assert tab.stats.cget("text") == "1 of 1 image usable"
    assert not tab.stats_panel.skipped_box.winfo_ismapped()
    requests = tab.stats_panel._token
    type_into(window.form.widget_for(f"concepts.{tab.selected}.repeats"), "3")  # does not change the statistics
    time.sleep(0.4)
    for _ in range(20):
        window.update()
    assert tab.stats_panel._token == requests


def test_demo_folder_not_made_yet_is_no_error_and_is_scanned_once_made(window, pump):
    """Before Start the demo's images folder is not there: said without alarm. Once Start (here: the test) has
    made it, the statistics follow while the tab is shown, with no Rescan, edit or focus change; while another
    tab is shown nothing is checked."""
    tab = window.tabs["concepts"]
    assert window.preset.general.demo_dir and window.preset.concepts, "the demo preset has its demo folder"
    window.tabview.set("concepts")
    tab.select(0)
    folder = Path(window.preset.concepts[0].path)
    assert not folder.exists(), "the demo's folder lies in the test's tmp_path"
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    assert "the demo builds it there" in tab.stats.cget("text")
    assert tab.stats.cget("text_color") != ERROR

    folder.mkdir(parents=True)
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (64, 64), colour).save(folder / f"{colour}.png")
        (folder / f"{colour}.txt").write_text(f"a {colour} square\n")
    wait_for(window, lambda: settled(tab, folder) and tab.stats.cget("text") == "3 of 3 images usable",
             "the new folder's statistics", timeout_s=5)

    window.tabview.set("general")
    (folder / "blue.png").unlink()
    pump(window, 1.5)
    assert tab.stats.cget("text") == "3 of 3 images usable"  # hidden: not rechecked (and no folder change)
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    pump(window, 1.5)
    assert tab.stats_panel.folder_existed is True  # hidden: not checked
    window.tabview.set("concepts")
    wait_for(window, lambda: settled(tab, folder) and "the demo builds it there" in tab.stats.cget("text"),
             "the statistics of the vanished folder", timeout_s=5)


def test_screenshot_of_concept_statistics(window, tmp_path, pump, screenshots):
    """Screenshots concepts_stats*.png: a concept with skipped files, missing captions and buckets; then the same
    concept with a folder that does not exist."""
    from PIL import ImageDraw
    folder = tmp_path / "portraits"
    folder.mkdir()
    sizes = [(512, 512)] * 5 + [(512, 768)] * 7 + [(768, 512)] * 3 + [(1024, 512), (400, 1000)]
    for i, size in enumerate(sizes):
        image = Image.new("RGB", size, ("#2a4d69", "#4b86b4", "#adcbe3", "#e7eff6", "#63ace5")[i % 5])
        ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill="white")
        image.save(folder / f"photo_{i:02d}.png")
        if i % 6:
            (folder / f"photo_{i:02d}.txt").write_text(f"a portrait of sks person, photo {i}, soft light\n")
    (folder / "broken_download.png").write_bytes(b"<html>not found</html>")
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    tab = select_new_concept(window, folder)
    type_into(window.form.widget_for(f"concepts.{tab.selected}.name"), "portraits")
    wait_for(window, lambda: settled(tab, folder), "the statistics")
    shot = screenshot(window, pump, screenshots, "concepts_stats")
    panel = tab.stats_panel
    assert shot.colours(panel.summary) > 4 and shot.count(panel.missing, WARNING, 60) > 20
    assert shot.colours(panel.chart) > 10, "the bucket chart is empty"
    type_into(window.form.widget_for(f"concepts.{tab.selected}.path"), str(tmp_path / "typo"))
    wait_for(window, lambda: settled(tab, tmp_path / "typo"), "the statistics")
    shot = screenshot(window, pump, screenshots, "concepts_stats_missing")
    assert shot.count(panel.summary, ERROR, 60) > 20, "the missing folder is not said in red"
