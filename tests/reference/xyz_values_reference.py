"""Reference X/Y/Z plot axis values for host/tests/integration/xyz.rs: a transcription of
A1111 v1.10.1's `scripts/xyz_grid.py: process_axis` (the value text read with Python's csv
module as `csv_string_to_list_strip` reads it, the four range patterns, numpy's `arange` and
`linspace`, then the axis type's conversion), run on a table of value texts.

Usage: xyz_values_reference.py CASES_JSON OUT_JSON. CASES_JSON is a list of
{"kind": "int"|"float"|"str"|"permutations", "text": ...}; OUT_JSON gets, per case, either
{"values": [...]} (ints as {"int": n}, floats as {"float_bits": IEEE-754 bits}, strings as
{"str": s}, orderings as {"order": [...]}) or {"error": "..."}.
"""

import csv
import json
import re
import struct
import sys
from io import StringIO
from itertools import chain, permutations

import numpy as np

re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
re_range_count_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


def process_axis(kind, vals):
    valslist = csv_string_to_list_strip(vals)
    if kind == "int":
        valslist_ext = []
        for val in valslist:
            m = re_range.fullmatch(val)
            mc = re_range_count.fullmatch(val)
            if m is not None:
                start = int(m.group(1))
                end = int(m.group(2)) + 1
                step = int(m.group(3)) if m.group(3) is not None else 1
                valslist_ext += list(range(start, end, step))
            elif mc is not None:
                start = int(mc.group(1))
                end = int(mc.group(2))
                num = int(mc.group(3)) if mc.group(3) is not None else 1
                valslist_ext += [int(x) for x in np.linspace(start=start, stop=end, num=num).tolist()]
            else:
                valslist_ext.append(val)
        return [int(x) for x in valslist_ext]
    if kind == "float":
        valslist_ext = []
        for val in valslist:
            m = re_range_float.fullmatch(val)
            mc = re_range_count_float.fullmatch(val)
            if m is not None:
                start = float(m.group(1))
                end = float(m.group(2))
                step = float(m.group(3)) if m.group(3) is not None else 1
                valslist_ext += np.arange(start, end + step, step).tolist()
            elif mc is not None:
                start = float(mc.group(1))
                end = float(mc.group(2))
                num = int(mc.group(3)) if mc.group(3) is not None else 1
                valslist_ext += np.linspace(start=start, stop=end, num=num).tolist()
            else:
                valslist_ext.append(val)
        return [float(x) for x in valslist_ext]
    if kind == "permutations":
        return list(permutations(valslist))
    return [str(x) for x in valslist]


def encode(value):
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float_bits": struct.unpack("<Q", struct.pack("<d", value))[0]}
    if isinstance(value, tuple):
        return {"order": list(value)}
    return {"str": value}


def main():
    cases = json.loads(open(sys.argv[1]).read())
    out = []
    for case in cases:
        try:
            values = process_axis(case["kind"], case["text"])
            out.append({"values": [encode(v) for v in values]})
        except Exception as e:  # A1111 shows the exception; the plot does not run.
            out.append({"error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
