"""LZW exactly as Go's ``compress/lzw`` with LSB bit order and literal width 8 (memberlist's compression).

Theory of operation. Codes 0..255 are literal bytes, 256 is the clear code and 257 the end code; new
dictionary entries are numbered from 258. Codes are packed least-significant bit first. They start 9
bits wide and widen by one bit when the next code to assign reaches 512, 1024 and 2048; the writer
emits a clear code (and starts over at 9 bits with an empty dictionary) when the next code to assign
would be 4095, so the width never exceeds 12. The writer always begins with a clear code, ends with
the end code, and pads the final byte with zero bits.

The encoder keeps the dictionary as a trie, a list indexed by code of ``{next byte: code}`` dicts
(created when a code gets its first child), so the per-byte step allocates nothing; the decoder
keeps each code's expansion as a ``bytes`` object. The decoder follows Go's reader: it accepts a stream that does not
start with a clear code, stops at the end code (ignoring what follows), and rejects a stream that
ends without one or names a code it has not defined yet. Its output is bounded by ``max_size``.
"""

from __future__ import annotations

from meshnet.core.errors import DecodeError

__all__ = ["compress", "decompress", "DEFAULT_MAX_SIZE"]

_CLEAR = 256
_EOF = 257
_MAX_CODE = 4095  # the writer resets before assigning this code
_MAX_WIDTH = 12

#: decompress's default output bound.
DEFAULT_MAX_SIZE = 20 * 1024 * 1024

_LITERALS = [bytes((i,)) for i in range(256)]


def compress(data: bytes) -> bytes:
    """Compress ``data`` byte-for-byte as Go's ``lzw.NewWriter(w, lzw.LSB, 8)`` would."""
    data = bytes(data)
    n = len(data)
    if not n:
        return (_CLEAR | _EOF << 9).to_bytes(3, "little")  # clear, end: 9 bits each
    out = bytearray()
    acc = _CLEAR  # the leading clear code, 9 bits wide
    nbits = 9
    width = 9
    hi = _EOF  # the last code assigned
    # The next code that needs attention: 512, 1024, 2048 widen the codes, _MAX_CODE resets.
    overflow = 512
    # The dictionary as a trie: kids[code] maps a next byte to the code of (code, byte), or is None
    # while code has no children. Codes never exceed 257 + n, so small inputs get a small list.
    size = min(_MAX_CODE + 1, 258 + n)
    kids: list[dict[int, int] | None] = [None] * size
    it = iter(data)
    code = next(it)
    # The hot loop: a list index and a dict probe per input byte (no integer is allocated).
    for x in it:
        d = kids[code]
        if d is not None:
            nxt = d.get(x)
            if nxt is not None:
                code = nxt
                continue
        acc |= code << nbits
        nbits += width
        if nbits >= 64:
            out += (acc & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
            acc >>= 64
            nbits -= 64
        hi += 1
        if hi >= overflow:
            if hi == _MAX_CODE:
                acc |= _CLEAR << nbits
                nbits += width
                width = 9
                hi = _EOF
                overflow = 512
                kids = [None] * size
                code = x
                continue
            width += 1
            overflow = overflow << 1 if width < _MAX_WIDTH else _MAX_CODE
        if d is None:
            kids[code] = {x: hi}
        else:
            d[x] = hi
        code = x
    # Close: the pending code, then the end code (the pending code may trigger a reset first).
    acc |= code << nbits
    nbits += width
    hi += 1
    if hi == _MAX_CODE:
        acc |= _CLEAR << nbits
        nbits += width
        width = 9
    elif hi == overflow:
        width += 1
    acc |= _EOF << nbits
    nbits += width
    out += acc.to_bytes((nbits + 7) // 8, "little")
    return bytes(out)


def decompress(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Inverse of :func:`compress` (any Go-compatible stream). Raises ``DecodeError`` on garbage,
    on a stream without an end code, and when the output would exceed ``max_size`` bytes."""
    buf = bytes(data)
    n = len(buf)
    pos = 0
    acc = 0
    nbits = 0
    width = 9
    mask = 0x1FF
    hi = _EOF
    overflow = 512
    last = -1  # -1: no previous code (start, or after a clear, or a full dictionary)
    table: list[bytes | None] = [*_LITERALS, None, None] + [None] * (_MAX_CODE + 1 - 258)
    chunks: list[bytes] = []
    total = 0
    while True:
        while nbits < width:
            if pos >= n:
                raise DecodeError("lzw: stream ends without an end code")
            acc |= buf[pos] << nbits
            pos += 1
            nbits += 8
        code = acc & mask
        acc >>= width
        nbits -= width
        if code < _CLEAR:
            entry = _LITERALS[code]
            if last >= 0:
                table[hi] = table[last] + entry  # type: ignore[operator]
        elif code == _CLEAR:
            width, mask, hi, overflow, last = 9, 0x1FF, _EOF, 512, -1
            continue
        elif code == _EOF:
            break
        elif code <= hi:
            if code == hi and last >= 0:
                prev = table[last]
                assert prev is not None
                entry = prev + prev[:1]
            else:
                got = table[code]
                if got is None:
                    raise DecodeError(f"lzw: code {code} used before it was defined")
                entry = got
            if last >= 0:
                table[hi] = table[last] + entry[:1]  # type: ignore[operator]
        else:
            raise DecodeError(f"lzw: invalid code {code} (next is {hi})")
        total += len(entry)
        if total > max_size:
            raise DecodeError(f"lzw: output exceeds {max_size} bytes")
        chunks.append(entry)
        last = code
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                last = -1
                hi -= 1
            else:
                width += 1
                mask = (1 << width) - 1
                overflow <<= 1
    return b"".join(chunks)
