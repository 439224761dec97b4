"""benchmarks/pngplot.py and the report's plot: every label is drawn from a real glyph (no
fallback box), and the plot can be redrawn from the written page alone."""

from __future__ import annotations

import pathlib
import struct
import sys
import zlib

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import pngplot  # noqa: E402
import report  # noqa: E402


def test_units_have_their_own_glyphs() -> None:
    for text in ("µs per tick (log scale)", "fit, all: 86 µs + 2.90 µs/target", "targets"):
        missing = {ch for ch in text if ch not in pngplot._FONT}
        assert not missing, (text, missing)
    assert pngplot._FONT["µ"] != pngplot._FONT["M"] and pngplot._FONT["s"] != pngplot._FONT["S"]


def test_the_plot_redraws_from_the_page(tmp_path: pathlib.Path) -> None:
    page = (REPO / "docs" / "performance.md").read_text()
    results = report.results_from_page(page)
    points = report.Run(results, None, None).scale()
    # powers of two from 1 up to the run's METALMEM_BENCH_SCALE_MAX (1024 by default)
    sizes = [n for n, _ in points]
    assert len(sizes) >= 8 and sizes == [2**k for k in range(len(sizes))]
    out = tmp_path / "plot.png"
    assert report.render_plot(report.Run(results, None, None), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 560)
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + length])) == height * (1 + 3 * width)
