#!/usr/bin/env python3
"""Writes the seed corpus for the pgoutput_decode fuzz target: one small, valid pgoutput
message (protocol version 1) per file, in seeds/pgoutput_decode/. Run from fuzz/."""

import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "pgoutput_decode")


def s(text):  # NUL-terminated string
    return text.encode() + b"\0"


def tuple_data(*columns):  # Int16 count, then n / u / t<len><bytes> / b<len><bytes>
    out = struct.pack(">h", len(columns))
    for kind, value in columns:
        out += kind
        if value is not None:
            out += struct.pack(">i", len(value)) + value
    return out


NULL, TOAST = (b"n", None), (b"u", None)


def text(v):
    return (b"t", v.encode())


SEEDS = {
    "begin": b"B" + struct.pack(">QqI", 0x16B3748, 7, 742),
    "commit": b"C" + struct.pack(">BQQq", 0, 0x16B3748, 0x16B3778, 7),
    "relation": b"R" + struct.pack(">I", 16391) + s("public") + s("orders") + b"d"
    + struct.pack(">h", 2)
    + b"\x01" + s("id") + struct.pack(">Ii", 23, -1)
    + b"\x00" + s("note") + struct.pack(">Ii", 25, -1),
    "insert": b"I" + struct.pack(">I", 16391) + b"N" + tuple_data(text("42"), NULL),
    "update": b"U" + struct.pack(">I", 16391)
    + b"K" + tuple_data(text("41"), NULL)
    + b"N" + tuple_data(text("42"), TOAST),
    "delete": b"D" + struct.pack(">I", 16391) + b"O" + tuple_data(text("42"), text("hello")),
    "truncate": b"T" + struct.pack(">IB", 2, 1) + struct.pack(">II", 16391, 16400),
    "message": b"M" + struct.pack(">BQ", 1, 0x16B3748) + s("walbox") + struct.pack(">i", 5) + b"hello",
    "origin": b"O" + struct.pack(">Q", 9) + s("node_a"),
    "type": b"Y" + struct.pack(">I", 90000) + s("public") + s("mood"),
    "insert_binary": b"I" + struct.pack(">I", 16391) + b"N"
    + tuple_data((b"b", b"\x00\x00\x00\x2a"), text("")),
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name:14} {len(data):3} bytes  {data.hex()}")
