"""Regenerate the message table in docs/protocol.md from qcuda/protocol/messages.py."""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcuda.protocol import messages as m  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BEGIN, END = "<!-- messages: begin (tools/gen_protocol_doc.py) -->", "<!-- messages: end -->"
CODES = {"Q": "u64", "I": "u32", "i": "i32", "f": "f32"}


def describe(cls) -> str:
    parts = []
    codes = iter(cls.FORMAT)
    for f in fields(cls):
        if f.name == cls.TAIL:
            parts.append(f"{f.name}: {'utf-8' if cls._tail_is_str else 'bytes'}…")
        else:
            parts.append(f"{f.name}: {CODES[next(codes)]}")
    return ", ".join(parts) or "—"


def table() -> str:
    rows = ["| command | request | fields | reply fields |", "|---|---|---|---|"]
    for cmd in m.Cmd:
        req = m.REQUESTS.get(cmd)
        rep = m.REPLIES.get(cmd)
        if req is None:
            continue
        reply = describe(rep) if rep else "status only"
        rows.append(f"| {int(cmd)} | `{req.__name__}` | {describe(req)} | {reply} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"updated {DOC}")
