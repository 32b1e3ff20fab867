"""The report table `distill demo` and `distill models show` print: the runtime that serves the
model by default, and why, is part of it."""

from __future__ import annotations

from distill_cli.report import report_table


def test_the_table_names_the_default_runtime_and_why() -> None:
    reason = ("the fastest at batch 1 (0.90 ms p50; torch 2.27 ms, onnx 1.23 ms) within 0.5 "
              "points of torch fp32 and onnx fp32 accuracy")
    model = {"id": "model-x", "report": {
        "teacher": {"accuracy": 0.85}, "student": {"accuracy": 0.82}, "retention": 0.965,
        "runtimes": {"default": "onnx-int8", "reason": reason,
                     "runtimes": {"torch": {}, "onnx": {}, "onnx-int8": {}}}}}

    caption = str(report_table(model).caption)

    assert f"served by default with onnx-int8: {reason}" in caption.splitlines()


def test_a_report_without_runtimes_names_none() -> None:
    caption = str(report_table({"id": "m", "report": {"retention": 0.9}}).caption)
    assert "served by default" not in caption
