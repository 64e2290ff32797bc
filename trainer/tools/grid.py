"""Labelled image grids written as one PNG, a band of rows at a time (memory: one row of cells). No UI here.

PIL needs the whole image in memory to write a PNG; a grid of many large samples would not fit, so the PNG
stream (signature, IHDR, zlib-compressed scanlines in IDAT chunks, IEND; see the PNG specification, ISO/IEC
15948) is written here directly, row band by row band.
"""
from __future__ import annotations

import os
import struct
import textwrap
import zlib
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
MISSING = (60, 60, 60)
PAD = 6


def font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


class PngWriter:
    """Writes an RGB PNG of known size from successive bands of rows (PIL images of the full width)."""

    def __init__(self, path: str | Path, width: int, height: int):
        self.path, self.width, self.height = Path(path), width, height
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")
        self.rows = 0
        self.compressor = zlib.compressobj(6)
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB, no interlace

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack(">I", len(data)) + kind + data)
        self.file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def add(self, band: Image.Image) -> None:
        if band.width != self.width or band.mode != "RGB":
            raise ValueError(f"a band must be RGB and {self.width} px wide, got {band.mode} {band.width} px")
        raw = band.tobytes()
        stride = self.width * 3
        # Each scanline starts with its filter type (0: none).
        lines = b"".join(b"\x00" + raw[y * stride:(y + 1) * stride] for y in range(band.height))
        data = self.compressor.compress(lines)
        if data:
            self._chunk(b"IDAT", data)
        self.rows += band.height

    def close(self) -> Path:
        """Finish the file and move it into place; the rows added must add up to the height."""
        try:
            if self.rows != self.height:
                raise ValueError(f"{self.rows} rows written, {self.height} expected")
            self._chunk(b"IDAT", self.compressor.flush())
            self._chunk(b"IEND", b"")
            self.file.close()
            os.replace(self.tmp, self.path)
            return self.path
        finally:
            self.abort()

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        if self.tmp.exists():
            self.tmp.unlink()


def fit(image: Image.Image, cell: tuple[int, int]) -> Image.Image:
    """The image scaled to fit the cell (aspect kept), centred on the grid background."""
    image = image.convert("RGB")
    scale = min(cell[0] / image.width, cell[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    out = Image.new("RGB", cell, BACKGROUND)
    out.paste(image.resize(size, Image.LANCZOS) if size != image.size else image,
              ((cell[0] - size[0]) // 2, (cell[1] - size[1]) // 2))
    return out


def write_grid(path: str | Path, row_labels: list[str], column_labels: list[str],
               cell_path: Callable[[int, int], str | None], cell: tuple[int, int], title: str = "") -> Path:
    """A grid PNG: a header with the title and column labels, then one band per row: its (wrapped) label and
    its cells. cell_path(row, column) gives an image file or None (drawn as an empty cell). Atomic."""
    f = font(14)
    line_h = 18
    label_w = 220
    cols, rows = len(column_labels), len(row_labels)
    width = label_w + cols * (cell[0] + PAD) + PAD
    header_lines = [title] if title else []
    col_lines = [textwrap.wrap(c, max(4, cell[0] // 8))[:3] or [""] for c in column_labels]
    header_h = PAD + line_h * (len(header_lines) + max((len(c) for c in col_lines), default=1)) + PAD
    height = header_h + rows * (cell[1] + PAD)
    writer = PngWriter(path, width, height)
    try:
        header = Image.new("RGB", (width, header_h), BACKGROUND)
        draw = ImageDraw.Draw(header)
        y = PAD
        for line in header_lines:
            draw.text((PAD, y), line, fill=TEXT, font=f)
            y += line_h
        for c, lines in enumerate(col_lines):
            for k, line in enumerate(lines):
                draw.text((label_w + PAD + c * (cell[0] + PAD), y + k * line_h), line, fill=TEXT, font=f)
        writer.add(header)
        for r, label in enumerate(row_labels):
            band = Image.new("RGB", (width, cell[1] + PAD), BACKGROUND)
            draw = ImageDraw.Draw(band)
            for k, line in enumerate(textwrap.wrap(label, 26)[: max(1, cell[1] // line_h)]):
                draw.text((PAD, k * line_h), line, fill=TEXT, font=f)
            for c in range(cols):
                x = label_w + PAD + c * (cell[0] + PAD)
                source = cell_path(r, c)
                if source and Path(source).exists():
                    with Image.open(source) as im:
                        band.paste(fit(im, cell), (x, 0))
                else:
                    band.paste(Image.new("RGB", cell, MISSING), (x, 0))
            writer.add(band)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
