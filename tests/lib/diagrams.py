"""Reading the diagrams of fxdnat's render pass: the SVG's DNAT edges and texts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"
BRANCH = "conv3x3-bn-relu-conv3x3-bn"
# forced on a ResNet20 with one θ row per edge: a branch turned into the identity, a skip and a
# downsampling shortcut removed (each join keeps a live operand)
DECISIONS = {"layer1.0:0": "identity", "layer1.1:1": "none", "layer3.0:1": "none"}


def svg_edges(path: Path) -> dict[str, dict]:
    """The DNAT edges of an SVG by edge name (an op edge is a box): stroke colour, dash pattern
    and label text."""
    root = ET.parse(path).getroot()
    found = {}
    for g in root.iter(f"{SVG}g"):
        if "dnat" not in g.get("class", "").split():
            continue
        stroke = next(p for p in g.iter(f"{SVG}path"))
        found[g.get("id")] = {
            "class": g.get("class"),
            "stroke": stroke.get("stroke"),
            "dashed": stroke.get("stroke-dasharray") is not None,
            "label": "".join(t.text or "" for t in g.iter(f"{SVG}text")),
        }
    return found


def svg_texts(path: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(path).getroot().iter(f"{SVG}text")]
