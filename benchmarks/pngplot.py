"""A small pure-Python PNG writer and the scale plot drawn with it (zlib + struct only).

matplotlib is not a dependency of metalmem and is not installed here; a scatter of a dozen
points, a fitted line, axes and labels need only pixels, a 5x7 bitmap font and the PNG
container (signature, IHDR, one IDAT, IEND; RGB, 8 bits, filter 0 on every row).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
GREY: RGB = (225, 225, 225)
DARK: RGB = (90, 90, 90)
BLUE: RGB = (31, 119, 180)
RED: RGB = (214, 39, 40)

# 5x7 glyphs, one string of 7 five-bit rows each; lower case is drawn as upper case.
_GLYPHS: dict[str, str] = {
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    ";": "00000 01100 01100 00000 01100 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    "*": "00000 00100 10101 01110 10101 00100 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000",
    "µ": "00000 10001 10001 10001 10011 11101 10000",
    "²": "01100 10010 00100 01000 11110 00000 00000",
}
_FONT = {ch: [int(row, 2) for row in rows.split()] for ch, rows in _GLYPHS.items()}


class Canvas:
    """An RGB image in memory with the few drawing operations a plot needs."""

    def __init__(self, width: int, height: int, background: RGB = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Filled, both corners included."""
        for y in range(max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)):
                self.set(x, y, color)

    def line(
        self, x0: int, y0: int, x1: int, y1: int, color: RGB, width: int = 1, dash: int = 0
    ) -> None:
        """Bresenham; ``width`` thickens it, ``dash`` > 0 draws dashes of that many pixels."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, step, half = dx + dy, 0, width // 2
        while True:
            if not dash or (step // dash) % 2 == 0:
                self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
            step += 1

    def text(self, x: int, y: int, s: str, color: RGB = BLACK, scale: int = 2) -> int:
        """Draw ``s`` with its top-left corner at (x, y); returns the width drawn."""
        cx = x
        for ch in s:
            rows = _FONT.get(ch, _FONT.get(ch.upper(), _FONT["*"]))
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (1 << (4 - c)):
                        self.rect(
                            cx + c * scale,
                            y + r * scale,
                            cx + (c + 1) * scale - 1,
                            y + (r + 1) * scale - 1,
                            color,
                        )
            cx += 6 * scale
        return cx - x

    def png(self) -> bytes:
        """The image as PNG file bytes."""
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def text_width(s: str, scale: int = 2) -> int:
    return len(s) * 6 * scale


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def nice_step(span: float, ticks: int = 5) -> float:
    """A 1-2-5 step that cuts ``span`` into about ``ticks`` parts."""
    raw = span / max(1, ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.3g}"


def scatter_with_fit(
    points: Sequence[tuple[float, float]],
    fits: Sequence[tuple[float, float, RGB, str]],
    *,
    title: str,
    subtitle: str,
    x_label: str,
    y_label: str,
    width: int = 900,
    height: int = 560,
) -> bytes:
    """A PNG of ``points`` (blue squares) and lines ``y = a + b x`` (``fits``: a, b, colour,
    legend) on linear axes; a power-of-two x range gets quarter ticks (256, 512, ...)."""
    c = Canvas(width, height)
    left, right, top, bottom = 90, 30, 80, 70
    pw, ph = width - left - right, height - top - bottom
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    top_x = max(xs)
    is_pow2 = top_x >= 8 and int(top_x) == top_x and int(top_x) & (int(top_x) - 1) == 0
    x_step = top_x / 4 if is_pow2 else nice_step(top_x)
    x_max = math.ceil(top_x / x_step) * x_step
    y_top = max(ys + [a + b * x_max for a, b, _, _ in fits])
    y_step = nice_step(y_top)
    y_max = math.ceil(y_top / y_step) * y_step

    def px(x: float) -> int:
        return left + round(x / x_max * pw)

    def py(y: float) -> int:
        return top + ph - round(y / y_max * ph)

    c.text(left, 16, title, BLACK, 2)
    c.text(left, 42, subtitle, DARK, 2)
    for i in range(round(y_max / y_step) + 1):
        y = i * y_step
        c.line(left, py(y), left + pw, py(y), GREY)
        label = _fmt(y)
        c.text(left - 10 - text_width(label), py(y) - 7, label, DARK)
    for i in range(round(x_max / x_step) + 1):
        x = i * x_step
        c.line(px(x), top, px(x), top + ph, GREY)
        label = _fmt(x)
        c.text(px(x) - text_width(label) // 2, top + ph + 10, label, DARK)
    c.line(left, top, left, top + ph, BLACK, 2)
    c.line(left, top + ph, left + pw, top + ph, BLACK, 2)
    c.text(left + pw // 2 - text_width(x_label) // 2, height - 28, x_label, BLACK)
    c.text(8, top - 30, y_label, BLACK)
    for i, (a, b, color, legend) in enumerate(fits):
        x0 = -a / b if a < 0 < b else 0.0  # start where the line enters the plot (y >= 0)
        c.line(px(x0), py(a + b * x0), px(x_max), py(a + b * x_max), color, 2, dash=8)
        c.line(left + 14, top + 17 + 24 * i, left + 44, top + 17 + 24 * i, color, 2, dash=8)
        c.text(left + 54, top + 10 + 24 * i, legend, color)
    for x, y in points:
        c.rect(px(x) - 4, py(y) - 4, px(x) + 4, py(y) + 4, BLUE)
    return c.png()
