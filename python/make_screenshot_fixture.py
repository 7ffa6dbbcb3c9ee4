"""Writes crates/io/tests/fixtures/screenshot.png: a colour screenshot of a radiograph viewer, the
kind of picture that gets dropped into an inbox by mistake (issue 26: one was queued as COVID-19
at 1.00). A dark window, as reading-room viewers are, with a work list whose status badges and
selection are coloured, patient text in the usual yellow and green over the image, and a sample
radiograph (samples/nih_00001385_000.png, NIH ChestX-ray14, unrestricted use) filling most of the
frame in plain grey, as a viewer shows it before any overlay. The colour is in the furniture
only, a few percent of the pixels, so a mean-saturation test alone lets it through.
Deterministic output. Needs Pillow (in the project's .venv).

    .venv/bin/python python/make_screenshot_fixture.py
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
RADIOGRAPH = ROOT / "samples/nih_00001385_000.png"
OUT = ROOT / "crates/io/tests/fixtures/screenshot.png"

WIDTH, HEIGHT = 960, 640
TITLE_BAR = 36
WORK_LIST = 190


def main():
    shot = Image.new("RGB", (WIDTH, HEIGHT), (24, 24, 27))
    draw = ImageDraw.Draw(shot)
    font = ImageFont.load_default(size=13)

    draw.rectangle([0, 0, WIDTH, TITLE_BAR], fill=(39, 39, 42))
    draw.text((12, 10), "Chest X-ray review  -  worklist 12/48", fill=(228, 228, 231), font=font)
    for i, colour in enumerate([(255, 95, 86), (255, 189, 46), (39, 201, 63)]):
        x = WIDTH - 24 - 22 * i
        draw.ellipse([x, 11, x + 13, 24], fill=colour)

    # The work list: rows of patient ids with a status badge each.
    draw.rectangle([0, TITLE_BAR, WORK_LIST, HEIGHT], fill=(32, 32, 36))
    badges = [("COVID", (220, 38, 38)), ("normal", (22, 163, 74)), ("review", (234, 179, 8))]
    for row in range(14):
        y = TITLE_BAR + 10 + row * 42
        if row == 3:
            draw.rectangle([4, y - 4, WORK_LIST - 4, y + 34], fill=(30, 58, 138))
        draw.text((12, y), f"PAT-{40211 + 7 * row}", fill=(228, 228, 231), font=font)
        label, colour = badges[(row * 5) % 3]
        draw.ellipse([112, y + 4, 122, y + 14], fill=colour)
        draw.text((128, y + 1), label, fill=colour, font=font)
        draw.text((12, y + 18), "2026-12-0%d  CR" % (1 + row % 5), fill=(140, 140, 146), font=font)

    # The radiograph, as large as the viewing area allows, on the viewer's black background.
    area = (WORK_LIST + 8, TITLE_BAR + 8, WIDTH - 8, HEIGHT - 8)
    draw.rectangle(area, fill=(0, 0, 0))
    radiograph = Image.open(RADIOGRAPH).convert("L")
    side = min(area[2] - area[0], area[3] - area[1])
    scale = side / max(radiograph.size)
    radiograph = radiograph.resize(
        (round(radiograph.width * scale), round(radiograph.height * scale)), Image.LANCZOS
    )
    left = area[0] + (area[2] - area[0] - radiograph.width) // 2
    top = area[1] + (area[3] - area[1] - radiograph.height) // 2
    shot.paste(radiograph.convert("RGB"), (left, top))
    # Viewer annotations over the image, in the usual yellow and green.
    draw.text((left + 6, top + 6), "PAT-40232  M 58y", fill=(250, 204, 21), font=font)
    draw.text((left + 6, top + 22), "AP portable", fill=(250, 204, 21), font=font)
    draw.text((left + 6, top + radiograph.height - 20), "W 2048 L 1024", fill=(74, 222, 128), font=font)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    shot.save(OUT, optimize=True)
    print(f"{OUT.relative_to(ROOT)}: {WIDTH}x{HEIGHT}, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
