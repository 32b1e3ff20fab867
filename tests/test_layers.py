"""The code's structure holds: no import circles among the project's modules
(`scripts/circles.py`), and the circle finder sees one when there is one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _circles_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("circles", ROOT / "scripts" / "circles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circles_among_the_projects_modules() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "circles.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("0 import circle(s)")


def test_the_finder_sees_a_circle_through_a_third_module_and_a_type_only_import(
    tmp_path: Path,
) -> None:
    circles = _circles_module()
    pkg = tmp_path / "distillation"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from distillation import b\n")
    (pkg / "b.py").write_text("from distillation.c import thing\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from distillation.a import x\nthing = 1\n")
    (pkg / "d.py").write_text("import distillation.a\n")
    known = {f"distillation.{n}": pkg / f"{n}.py" for n in "abcd"}
    graph = {name: circles.imports(name, path, known) for name, path in known.items()}
    assert circles.circles(graph) == [["distillation.a", "distillation.b", "distillation.c"]]
