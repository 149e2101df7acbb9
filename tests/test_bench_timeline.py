"""bench/timeline.py: one boot's SVG from its events (pure, untimed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench.timeline import render_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_every_phase_seen_is_one_bar_and_missing_ones_are_left_out() -> None:
    daemon = {"aa": {"queued": 0.05, "up": 0.15, "released": 0.16, "ready": 0.17},
              "kata": {"queued": 0.05, "up": 0.16, "released": None, "ready": 0.30}}
    ideal = {"aa": {"run": 0.0, "returned": 0.10, "ready": 0.11},
             "kata": {"run": 0.11, "returned": 0.21, "ready": 0.22}}
    root = ET.fromstring(render_svg(daemon, ideal, "boot <3>"))
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    titles = [r.find(f"{SVG}title").text for r in bars]
    assert len(bars) == 3 + 1 + 2 + 2   # kata's released is unknown: its two bars around it are left out
    assert "aa: released → ready 0.160–0.170 s" in titles
    assert not any(t.startswith("kata: container up") for t in titles)
    assert root.find(f"{SVG}text").text == "boot <3>"   # escaped, and parsed back
    ready_marks = [line for line in root.iter(f"{SVG}line") if line.get("stroke") == "black"]
    assert len(ready_marks) == 4


def test_bars_are_placed_by_time() -> None:
    daemon = {"c": {"queued": 0.0, "up": 0.5, "released": 0.5, "ready": 1.0}}
    root = ET.fromstring(render_svg(daemon, {}, "t"))
    bars = {r.find(f"{SVG}title").text.split(":")[1].strip(): r for r in root.iter(f"{SVG}rect")
            if r.find(f"{SVG}title") is not None}
    first, last = bars["unit queued → container up 0.000–0.500 s"], bars["released → ready 0.500–1.000 s"]
    assert float(first.get("x")) < float(last.get("x"))
    assert abs(float(first.get("width")) - float(last.get("width"))) < 0.5
