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

# 5x7 glyphs, one string of 7 five-bit rows each. Lower case has its own glyphs: drawn as
# upper case, "µs" read as "MS" (issue 18).
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
    "µ": "00000 00000 10010 10010 10010 11101 10000",
    "a": "00000 00000 01110 00001 01111 10001 01111",
    "b": "10000 10000 10110 11001 10001 10001 11110",
    "c": "00000 00000 01110 10000 10000 10001 01110",
    "d": "00001 00001 01101 10011 10001 10001 01111",
    "e": "00000 00000 01110 10001 11111 10000 01110",
    "f": "00110 01001 01000 11100 01000 01000 01000",
    "g": "00000 01111 10001 10001 01111 00001 01110",
    "h": "10000 10000 10110 11001 10001 10001 10001",
    "i": "00100 00000 01100 00100 00100 00100 01110",
    "j": "00010 00000 00110 00010 00010 10010 01100",
    "k": "10000 10000 10010 10100 11000 10100 10010",
    "l": "01100 00100 00100 00100 00100 00100 01110",
    "m": "00000 00000 11010 10101 10101 10001 10001",
    "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110",
    "p": "00000 00000 11110 10001 11110 10000 10000",
    "q": "00000 00000 01101 10011 01111 00001 00001",
    "r": "00000 00000 10110 11001 10000 10000 10000",
    "s": "00000 00000 01110 10000 01110 00001 11110",
    "t": "01000 01000 11100 01000 01000 01001 00110",
    "u": "00000 00000 10001 10001 10001 10011 01101",
    "v": "00000 00000 10001 10001 10001 01010 00100",
    "w": "00000 00000 10001 10001 10101 10101 01010",
    "x": "00000 00000 10001 01010 00100 01010 10001",
    "y": "00000 00000 10001 10001 01111 00001 01110",
    "z": "00000 00000 11111 00010 00100 01000 11111",
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
            rows = _FONT.get(ch, _FONT["*"])
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


def _log_ticks(lo: float, hi: float, base: int) -> list[float]:
    """Tick values for a log axis: powers of 2 (``base`` 2) or 1-2-5 per decade (10)."""
    if base == 2:
        first = math.floor(math.log2(lo))
        return [2.0**k for k in range(first, math.ceil(math.log2(hi)) + 1)]
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks.extend(m * 10.0**k for m in (1, 2, 5))
    return [t for t in ticks if lo / 1.0001 <= t <= hi * 1.0001] or [lo, hi]


def _nice_bound(v: float, *, down: bool) -> float:
    """The nearest 1-2-5 value at or below (``down``) or at or above ``v`` (> 0)."""
    k = math.floor(math.log10(v))
    steps = [m * 10.0**e for e in (k - 1, k, k + 1) for m in (1, 2, 5)]
    return max(t for t in steps if t <= v) if down else min(t for t in steps if t >= v)


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
    """A PNG of ``points`` (blue squares) and curves ``y = a + b x`` (``fits``: a, b, colour,
    legend) on log-log axes: x by powers of two, y by 1-2-5 per decade.

    Target counts double from 1 to 1024; on a linear x axis 7 of 11 points piled up near 0
    (issue 18). On log axes every point has room, and a line ``a + b x`` shows as the curve it
    is there: flat while the intercept dominates, then rising with slope 1.
    """
    c = Canvas(width, height)
    left, right, top, bottom = 100, 30, 100, 70
    pw, ph = width - left - right, height - top - bottom
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = _log_ticks(min(xs), max(xs), 2)
    x_lo, x_hi = x_ticks[0], x_ticks[-1]
    curve_ys = [a + b * x for a, b, _, _ in fits for x in (x_lo, x_hi)]
    y_lo = _nice_bound(min(ys + [y for y in curve_ys if y > 0]), down=True)
    y_hi = _nice_bound(max(ys + curve_ys), down=False)
    y_ticks = _log_ticks(y_lo, y_hi, 10)

    def px(x: float) -> int:
        return left + round(math.log(x / x_lo) / math.log(x_hi / x_lo) * pw)

    def py(y: float) -> int:
        return top + ph - round(math.log(y / y_lo) / math.log(y_hi / y_lo) * ph)

    c.text(left, 16, title, BLACK, 2)
    c.text(left, 42, subtitle, DARK, 2)
    for y in y_ticks:
        c.line(left, py(y), left + pw, py(y), GREY)
        label = _fmt(y)
        c.text(left - 10 - text_width(label), py(y) - 7, label, DARK)
    for x in x_ticks:
        c.line(px(x), top, px(x), top + ph, GREY)
        label = _fmt(x)
        c.text(px(x) - text_width(label) // 2, top + ph + 10, label, DARK)
    c.line(left, top, left, top + ph, BLACK, 2)
    c.line(left, top + ph, left + pw, top + ph, BLACK, 2)
    c.text(left + pw // 2 - text_width(x_label) // 2, height - 28, x_label, BLACK)
    c.text(8, top - 26, y_label, BLACK)
    for i, (a, b, color, legend) in enumerate(fits):
        steps = 64  # a polyline through the curve, evenly spaced on the log x axis
        curve = [x_lo * (x_hi / x_lo) ** (k / steps) for k in range(steps + 1)]
        prev: tuple[int, int] | None = None
        for x in curve:
            y = a + b * x
            if y <= 0:
                prev = None
                continue
            here = (px(x), py(min(max(y, y_lo), y_hi)))
            if prev is not None:
                c.line(*prev, *here, color, 2)
            prev = here
        c.line(left + 14, top + 17 + 24 * i, left + 44, top + 17 + 24 * i, color, 2)
        c.text(left + 54, top + 10 + 24 * i, legend, color)
    for x, y in points:
        c.rect(px(x) - 4, py(y) - 4, px(x) + 4, py(y) + 4, BLUE)
    return c.png()
