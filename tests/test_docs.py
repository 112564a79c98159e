"""The docs that are generated from code are current."""
from __future__ import annotations

import importlib.util

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_protocol_doc_message_table_is_current():
    spec = importlib.util.spec_from_file_location("gen", REPO / "tools" / "gen_protocol_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (REPO / "docs" / "protocol.md").read_text()
    assert gen.render(text) == text, "run python tools/gen_protocol_doc.py"
