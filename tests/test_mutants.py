"""scripts/mutants.py stays runnable: every hand-written mutant still finds the code it breaks, once, and names
tests that exist (a stale mutant would stop a full run part-way, as one did at mutant 16)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_mutants():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


def test_every_mutant_finds_its_code_once_and_names_existing_tests():
    mutants = load_mutants()
    assert len(mutants) >= 50
    for name, (path, original, broken, selection) in mutants.items():
        assert (ROOT / path).read_text().count(original) == 1, f"{name}: its original text is not in {path} once"
        assert original != broken, name
        for node in selection.split():
            file, _, test = node.partition("::")
            assert (ROOT / file).is_file(), f"{name}: no {file}"
            if test:
                test = test.split("[")[0]
                assert re.search(rf"^def {re.escape(test)}\(", (ROOT / file).read_text(), re.M), f"{name}: {node}"
