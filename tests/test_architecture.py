"""docs/architecture.md is the map: every `file: name` it names must exist, so the map cannot rot quietly."""
from __future__ import annotations

import re

from conftest import ROOT

REF = re.compile(r"`([\w/]+\.py): (\w+)`")


def test_every_file_and_name_on_the_map_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    refs = REF.findall(text)
    assert len(refs) > 30
    missing = []
    for path, name in refs:
        source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        if not re.search(rf"^(def|class) {name}\b|^{name}\s*[:=]|^    def {name}\b", source, re.M):
            missing.append(f"{path}: {name}")
    assert not missing, missing
