"""Which teacher layer stands for which student layer: shared by student init and layer losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def even_spread(student_layers: int, teacher_layers: int) -> list[int]:
    """Evenly spaced teacher layers for each student layer, ending at the teacher's last layer.

    Student layer i takes teacher layer round((i + 1) · T / S) − 1: 3 of 6 → [1, 3, 5],
    1 of 2 → [1], 4 of 12 → [2, 5, 8, 11]. A student deeper than its teacher repeats layers.
    """
    if student_layers <= 0 or teacher_layers <= 0:
        return []
    return [
        max(0, ((i + 1) * teacher_layers + student_layers // 2) // student_layers - 1)
        for i in range(student_layers)
    ]


def check_layer_map(
    layer_map: Mapping[Any, Any], param: str, *, student_layers: int, teacher_layers: int
) -> list[tuple[str, str]]:
    """Problems with a {student layer: teacher layer} map (0-based), as (param, message)."""
    problems: list[tuple[str, str]] = []
    if not layer_map:
        problems.append((param, f"{param}: give at least one student layer, or leave it out"))
    for key, value in layer_map.items():
        try:
            student, teacher = int(key), int(value)
        except (TypeError, ValueError):
            problems.append((param, f"{param}: {key!r}: {value!r} is not a pair of layer numbers"))
            continue
        if not 0 <= student < student_layers:
            problems.append((param, f"{param}: student layer {student} does not exist "
                             f"(student has {student_layers} layers)"))
        if not 0 <= teacher < teacher_layers:
            problems.append((param, f"{param}: teacher layer {teacher} does not exist "
                             f"(teacher has {teacher_layers} layers)"))
    return problems
