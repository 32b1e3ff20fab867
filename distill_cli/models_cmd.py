"""`distill models …`: list, show, download, delete and predict with models on a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from distill_cli.remote import (
    DEFAULT_API_URL,
    ApiKeyOpt,
    ApiUrlOpt,
    JsonOpt,
    connect,
    console,
    print_json,
    print_page,
    reply,
    table,
    when,
)
from distill_cli.report import report_table

models_cli = typer.Typer(help="Models: built-in, uploaded and distilled.", no_args_is_help=True)

ModelIdArg = Annotated[str, typer.Argument(help="The model's id (`model-…`) or built-in name.")]


@models_cli.command("list")
def list_models(api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
                json_out: JsonOpt = False) -> None:
    """The built-in models and the tenant's own."""
    with connect(api_url, api_key) as client:
        page = client.models.list()
    print_page(page, json_out, ("id", "source", "task", "parameters", "size (MB)", "job",
                                "created (UTC)"),
               lambda m: (m.id, m.source or "-", m.task, f"{m.parameters:,}",
                          f"{m.size_bytes / 1e6:.1f}", m.source_job or "-", when(m.created_at)))


@models_cli.command("get")
def get(model_id: ModelIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
        json_out: JsonOpt = False) -> None:
    """One model, with its report (teacher vs student) when it was distilled."""
    with connect(api_url, api_key) as client:
        model = client.models.get(model_id)
    if json_out:
        print_json(model)
        return
    out = console()
    for key, value in [("id", model.id), ("source", model.source or "-"), ("task", model.task),
                       ("parameters", f"{model.parameters:,}"),
                       ("size (MB)", f"{model.size_bytes / 1e6:.1f}"),
                       ("labels", ", ".join(model.labels or []) or "-"),
                       ("job", model.source_job or "-"), ("created (UTC)", when(model.created_at))]:
        out.print(f"{key:<14} {escape(value)}")
    if model.report:
        out.print(report_table(model.to_dict()))


@models_cli.command("download")
def download(
    model_id: ModelIdArg,
    dir: Annotated[Path, typer.Argument(help="A new (or empty) folder to unpack it into.")],
    format: Annotated[str, typer.Option(help="hf, onnx or onnx-int8.")] = "hf",
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """Download a model into DIR: a folder `from_pretrained` loads (hf), or an ONNX Runtime
    folder (onnx, onnx-int8: model.onnx, the tokenizer and a README with the code to run it)."""
    with connect(api_url, api_key) as client:
        folder = client.models.download(model_id, dir, format=format)
    if json_out:
        print_json({"id": model_id, "format": format, "path": str(folder)})
        return
    how = (f"AutoModelFor….from_pretrained({str(folder)!r})" if format == "hf" else
           f"onnxruntime.InferenceSession({str(folder / 'model.onnx')!r}) and "
           f"AutoTokenizer.from_pretrained({str(folder)!r}) (its README.md shows the code)")
    console().print(f"Downloaded {model_id} ({format}) to {folder}\nLoad it with {how}.")


@models_cli.command("delete")
def delete(model_id: ModelIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
           json_out: JsonOpt = False) -> None:
    """Delete one of your models (built-in ones cannot be)."""
    with connect(api_url, api_key) as client:
        deleted = client.models.delete(model_id)
    reply(deleted, json_out, f"Deleted {deleted.id}.")


@models_cli.command("predict")
def predict(
    model_id: ModelIdArg,
    texts: Annotated[list[str], typer.Argument(help="One or more input texts.")],
    runtime: Annotated[str | None, typer.Option(help="torch, onnx or onnx-int8.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="Generated tokens per input (language models).")] = None,
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """Run the model on TEXT…: label and score (classifiers) or generated text."""
    with connect(api_url, api_key) as client:
        result = client.models.predict(model_id, texts, runtime=runtime,
                                       max_new_tokens=max_new_tokens)
    if json_out:
        print_json(result)
        return
    generated = any(p.text is not None for p in result.data)
    rows = table("input", "output", ids=()) if generated else table("input", "label", "score", ids=())
    for text, p in zip(texts, result.data, strict=False):
        if generated:
            rows.add_row(escape(text), escape(p.text or ""))
        else:
            rows.add_row(escape(text), escape(p.label or "-"),
                          "-" if p.score is None else f"{p.score:.3f}")
    console().print(rows)
