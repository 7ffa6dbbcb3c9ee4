"""Writes crates/io/tests/fixtures/nested-sequences.dcm: a small, valid-looking DICOM radiograph
(64x64, 8-bit MONOCHROME2) whose data set holds a sequence nested 200,000 levels deep, stored with
the deflated transfer syntax so that the file stays small (the hardening issue's poisoned file:
a recursive parser overflows its stack on it). Standard library only; deterministic output.

    python3 python/make_hostile_dicom.py
"""

import struct
import zlib
from pathlib import Path

LEVELS = 200_000
OUT = Path(__file__).resolve().parent.parent / "crates/io/tests/fixtures/nested-sequences.dcm"


def element(group, elem, vr, value):
    """An explicit-VR little-endian element with a defined length."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def us(group, elem, v):
    return element(group, elem, b"US", struct.pack("<H", v))


def data_set():
    out = bytearray()
    out += element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1")
    out += element(0x0008, 0x0018, b"UI", b"1.2.826.0.1.3680043.9.7433.1.1")
    out += element(0x0008, 0x0060, b"CS", b"CR")
    # Referenced Image Sequence, nested: each level one item of undefined length holding the next.
    open_level = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    out += open_level * LEVELS + close_level * LEVELS
    out += element(0x0010, 0x0020, b"LO", b"NESTED")
    out += us(0x0028, 0x0002, 1)
    out += element(0x0028, 0x0004, b"CS", b"MONOCHROME2")
    out += us(0x0028, 0x0010, 64)
    out += us(0x0028, 0x0011, 64)
    out += us(0x0028, 0x0100, 8)
    out += us(0x0028, 0x0101, 8)
    out += us(0x0028, 0x0102, 7)
    out += us(0x0028, 0x0103, 0)
    pixels = bytes((x * 3 + y * 2) % 256 for y in range(64) for x in range(64))
    out += element(0x7FE0, 0x0010, b"OB", pixels)
    return bytes(out)


def main():
    meta_elements = (
        element(0x0002, 0x0001, b"OB", b"\0\1")
        + element(0x0002, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.1")
        + element(0x0002, 0x0003, b"UI", b"1.2.826.0.1.3680043.9.7433.1.1")
        + element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1.99")
    )
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_elements))) + meta_elements
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as DICOM wants
    deflated = compressor.compress(data_set()) + compressor.flush()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(b"\0" * 128 + b"DICM" + meta + deflated)
    print(f"{OUT}: {OUT.stat().st_size} bytes, {LEVELS} nested levels")


if __name__ == "__main__":
    main()
