#!/usr/bin/env python3
"""Seeds each fuzz target's corpus from the transcripts in tests/fixtures.

Each seed is laid out as `Canned::from_fuzz` reads it (fuzz/src/lib.rs):
byte 0 picks status and content type (0: 200 text/event-stream, 0x80: the
same answer to a non-streaming request), byte 1 the number of cut lengths
(0 here), then 8 bytes of a little-endian u64 written wherever the body says
`@I`, then the body. Wire indices (OpenAI's tool-call `index`, Anthropic's
content-block `index`) become `@I`, and each transcript is seeded with
indices 0, 1, 4,000,000,000 and u64::MAX, so the fuzzer starts at the
extremes instead of having to find them.

    python3 fuzz/seed.py        # writes fuzz/corpus/<target>/seed-*
    cd fuzz && cargo +nightly fuzz run openai corpus/openai -- -max_total_time=600
"""

import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT.parent / "tests" / "fixtures"
WIDE = [0, 1, 4_000_000_000, 2**64 - 1]
# The index fields a server numbers, by dialect; choices[].index stays 0.
INDEX = {
    "openai": re.compile(rb'("tool_calls":\[\{"index":)\d+'),
    "anthropic": re.compile(rb'("index":)\d+'),
    "gemini": None,
}


def seeds(target):
    for path in sorted(FIXTURES.glob("*.sse")):
        name = path.name
        if not (name.startswith(target) or (target == "openai" and name.startswith("openai_compat"))):
            continue
        body = path.read_bytes()
        pattern = INDEX[target]
        if pattern is not None:
            body = pattern.sub(rb"\1@I", body)
        for n, wide in enumerate(WIDE):
            head = bytes([0, 0]) + struct.pack("<Q", wide)
            yield f"seed-{path.stem}-{n}", head + body


def main():
    for target in ["openai", "anthropic", "gemini", "sse"]:
        out = ROOT / "corpus" / target
        out.mkdir(parents=True, exist_ok=True)
        count = 0
        source = target if target != "sse" else None
        if source is None:
            # The SSE decoder takes raw bytes: every transcript as it is.
            for path in sorted(FIXTURES.glob("*.sse")):
                (out / f"seed-{path.stem}").write_bytes(path.read_bytes())
                count += 1
        else:
            for name, data in seeds(source):
                (out / name).write_bytes(data)
                count += 1
        print(f"{target}: {count} seeds in {out}")


if __name__ == "__main__":
    main()
