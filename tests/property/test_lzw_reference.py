"""``lzw.compress`` against a textbook LZW writer with Go's rules (LSB first, literal width 8, clear
code 256 first, end code 257 last, width grows when the next code reaches 512/1024/2048, reset when it
would be 4095). The reference favours clarity over speed: a dict of byte strings and a list of
(code, width) pairs packed at the end. Inputs cross every width change and the reset, at the end
of the input as well as in the middle."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.gossip import lzw


def reference_compress(data: bytes) -> bytes:
    codes: list[tuple[int, int]] = [(256, 9)]
    table = {bytes([i]): i for i in range(256)}
    hi = 257
    width = 9

    def assigned() -> None:  # a code was emitted: the writer assigns the next one
        nonlocal hi, width, table
        hi += 1
        if hi == 1 << width and width < 12:
            width += 1
        if hi == 4095:
            codes.append((256, width))
            table = {bytes([i]): i for i in range(256)}
            hi, width = 257, 9
            return
        table[pending] = hi

    w = data[:1]
    for i in range(1, len(data)):
        wc = w + data[i : i + 1]
        if wc in table:
            w = wc
            continue
        codes.append((table[w], width))
        pending = wc
        assigned()
        w = data[i : i + 1]
    if w:
        codes.append((table[w], width))
        pending = b""
        hi += 1
        if hi == 1 << width and width < 12:
            width += 1
        if hi == 4095:
            codes.append((256, width))
            width = 9
    codes.append((257, width))
    acc = 0
    nbits = 0
    for code, bits in codes:
        acc |= code << nbits
        nbits += bits
    return acc.to_bytes((nbits + 7) // 8, "little")


def _emission_points(data: bytes) -> dict[int, int]:
    """Input offset -> the last assigned code after the emission made at that offset (reference)."""
    table = {bytes([i]): i for i in range(256)}
    hi = 257
    out: dict[int, int] = {}
    w = data[:1]
    for i in range(1, len(data)):
        wc = w + data[i : i + 1]
        if wc in table:
            w = wc
            continue
        hi += 1
        if hi == 4095:
            table = {bytes([i]): i for i in range(256)}
            hi = 257
        else:
            table[wc] = hi
        out[i] = hi
        w = data[i : i + 1]
    return out


def test_reference_agrees_on_every_prefix_near_the_width_changes_and_the_reset() -> None:
    rng = random.Random(3)
    noise = bytes(rng.randrange(256) for _ in range(4300))  # ~1 code per byte: reaches the reset
    points = _emission_points(noise)
    edges = {
        i for i, hi in points.items() if hi in (510, 511, 512, 1022, 1023, 1024, 2046, 2047, 2048, 257, 4094)
    }
    assert any(points[i] == 257 for i in edges)  # the reset is among them
    lengths = sorted({n for i in edges for n in range(i - 3, i + 4)} | set(range(0, 40)))
    for n in lengths:
        d = noise[:n]
        assert lzw.compress(d) == reference_compress(d), n
        assert lzw.decompress(lzw.compress(d)) == d


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=8))
def test_reference_agrees_on_random_inputs(raw: bytes, alphabet_bits: int) -> None:
    data = bytes(b & ((1 << alphabet_bits) - 1) for b in raw)  # small alphabets make long matches
    assert lzw.compress(data) == reference_compress(data)
