"""Reads `cxr eval --plots` output independently of cxr: each SVG parsed as XML (element counts
and the words it shows), each PNG opened with Pillow (size, colours). Prints a stable text summary
for the snapshot. Usage: plot_structure.py DIR."""
import collections
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

from PIL import Image

folder = pathlib.Path(sys.argv[1])
for svg in sorted(folder.glob("*.svg")):
    root = ET.parse(svg).getroot()
    tags = collections.Counter(el.tag.split("}")[-1] for el in root.iter())
    # Words, not tick numbers: the axis descriptions, legend and captions.
    words = [t.text.strip() for t in root.iter() if t.tag.endswith("text") and t.text
             and re.search("[a-z]{2}|%", t.text)]
    print(f"== {svg.name} {root.get('width')}x{root.get('height')}")
    print("   shapes: " + ", ".join(f"{k} {tags[k]}" for k in ("polyline", "rect", "circle", "line")
                                    if tags[k]))
    for word in words:
        print(f"   text: {word}")
    png = Image.open(svg.with_suffix(".png"))
    colours = len(png.convert("RGB").getcolors(1 << 20) or [])
    print(f"   png: {png.size[0]}x{png.size[1]} {png.mode}, {'many' if colours > 16 else colours} colours")
