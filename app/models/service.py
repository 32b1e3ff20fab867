"""The model registry: built-in models, uploaded teachers, distilled students and the teachers
jobs fine-tuned, of a tenant.

`resolve_model_ref` (jobs service) and `register_distilled_model` (worker) are the entry
points for the other slices; the rest serves `/v1/models`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy.orm import Session

from app.kit.clock import now
from app.kit.errors import Conflict, InvalidRequest, NotFound
from app.kit.ids import new_id
from app.models import repository
from app.models.archive import invalid_archive, unpack_model_archive
from app.models.builtin import available_builtins, get_builtin
from app.models.gguf_upload import convert_uploaded_gguf, is_gguf_upload
from app.models.store import (
    iter_stored_model_tar_gz,
    local_model_dir,
    publish_model_dir,
    stored_model_files,
    unpublish_model_dir,
)
from app.models.tables import ModelRow
from app.models.views import ModelView, from_builtin, from_row, inspect_cached
from app.models.weights import weight_stats
from app.settings import Settings, get_settings
from app.storage import local
from app.storage.object_store import is_remote, remove_location
from app.storage.tar_gz import iter_tar_gz
from distillation.export.runtimes import (
    ONNX_FILE,
    RUNTIME_SUBDIRS,
    RUNTIMES_FILE,
    available_runtimes,
)
from distillation.models.info import ModelInfo

# What `GET /v1/models/{id}/download` gives: the Hugging Face directory, or an ONNX runtime's.
DownloadFormat = Literal["hf", "onnx", "onnx-int8"]
# The ONNX formats: the sub-folder of the model directory each one is.
EXPORT_DIRS: dict[DownloadFormat, str] = {"onnx": RUNTIME_SUBDIRS["onnx"],
                                          "onnx-int8": RUNTIME_SUBDIRS["onnx-int8"]}
# Safetensors barely compress, tokenizers do: a generous bound on what an upload unpacks to.
UNPACKED_SIZE_FACTOR = 4


@dataclass
class ResolvedModel:
    """A model ref made concrete: its directory and what its config says."""

    path: Path
    ref: str
    model_id: str | None  # the API id (`model-…` or a built-in name); None for a local path
    info: ModelInfo


def list_models(*, session: Session, tenant_id: str) -> list[ModelView]:
    """Built-in models first, then the tenant's models, newest first (nothing is converted)."""
    builtins = [from_builtin(model, get_settings()) for model in available_builtins()]
    rows = repository.list_for_tenant(session, tenant_id=tenant_id)
    return builtins + [from_row(r) for r in rows]


def get_model(*, session: Session, tenant_id: str, model_id: str) -> ModelView:
    """A built-in model or the tenant's model; 404 for a missing id and another tenant's alike."""
    builtin = get_builtin(model_id)
    if builtin is not None:
        return from_builtin(builtin, get_settings())
    row = repository.get_for_tenant(session, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        raise NotFound(f"No model with id {model_id!r}.", param="model_id")
    return from_row(row)


def create_uploaded_model(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    filename: str | None,
    archive: BinaryIO,
) -> ModelView:
    """Register a teacher from a .tar.gz of a Hugging Face directory, or from a .gguf file
    (converted into one), checked, then stored."""
    model_id = new_id("model")
    staging = local.staging_dir(settings.models_dir)
    try:
        if is_gguf_upload(filename, archive):
            staging.rmdir()  # the conversion renames its folder into place
            convert_uploaded_gguf(archive, staging, max_parameters=settings.max_gguf_parameters)
        else:
            unpack_model_archive(
                archive, staging,
                max_total_bytes=settings.max_model_upload_bytes * UNPACKED_SIZE_FACTOR,
            )
        # Runtime exports are the service's own (made and measured at a job's export): an
        # upload's `onnx/` folders (Hub snapshots often carry one) are not served.
        for name in (*RUNTIME_SUBDIRS.values(), RUNTIMES_FILE):
            local.remove(staging / name)
        try:
            info = inspect_cached(staging)
            stats = weight_stats(staging)
        except ValueError as exc:
            raise invalid_archive(f"The archive is not a loadable model: {exc}") from exc
        final = publish_model_dir(settings, staging, model_id)
    finally:
        local.remove(staging)  # gone already when it was renamed into a local store
    row = ModelRow(
        id=model_id,
        tenant_id=tenant_id,
        task=info.task,
        source="uploaded",
        source_job=None,
        filename=(filename or "")[-255:] or None,
        parameters=stats.parameters,
        size_bytes=stats.size_bytes,
        labels=info.labels,
        report=None,
        path=final,
        created_at=now(),
    )
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        remove_location(settings, final)
        raise
    return from_row(row)


def delete_model(*, session: Session, tenant_id: str, model_id: str) -> None:
    """Delete the tenant's model and its files; built-ins and models in use answer 409."""
    if get_builtin(model_id) is not None:
        raise Conflict(f"{model_id} is a built-in model and cannot be deleted.", param="model_id")
    row = repository.get_for_tenant(session, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        raise NotFound(f"No model with id {model_id!r}.", param="model_id")
    jobs = repository.active_jobs_using(session, tenant_id=tenant_id, model_id=model_id)
    if jobs:
        raise Conflict(
            f"Model {model_id} is used by unfinished job(s) {', '.join(sorted(jobs))}; cancel "
            "them or wait until they finish.",
            param="model_id",
            code="model_in_use",
        )
    location = row.path
    session.delete(row)
    session.commit()
    # After the commit: a failed commit must not leave a row whose directory is gone.
    remove_location(get_settings(), location)


def download_formats(model_dir: Path) -> list[DownloadFormat]:
    """hf, then each ONNX runtime the model was exported to."""
    have = available_runtimes(model_dir)
    return ["hf", *(fmt for fmt in EXPORT_DIRS if fmt in have)]


def _stored_formats(files: dict[str, int]) -> list[DownloadFormat]:
    """`download_formats` of a model in the remote store, read from its manifest."""
    return ["hf", *(fmt for fmt, folder in EXPORT_DIRS.items() if f"{folder}/{ONNX_FILE}" in files)]


def _no_such_export(model_id: str, fmt: str, formats: list[DownloadFormat]) -> InvalidRequest:
    return InvalidRequest(
        f"Model {model_id} has no {fmt} export (only classifier students distilled by a job "
        f"are exported to ONNX); it can be downloaded as: {', '.join(formats)}.",
        param="format", code="format_unavailable")


def download_model(
    *, session: Session, tenant_id: str, model_id: str, fmt: DownloadFormat = "hf"
) -> Iterator[bytes]:
    """The directory that `fmt`'s runtime loads, as a streamed .tar.gz (members at the archive
    root): `hf` is the Hugging Face directory without the ONNX sub-directories, `onnx` and
    `onnx-int8` are those sub-directories (400 naming `format` when the model has no such export)."""
    view = get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    skip = tuple(f"{folder}/" for folder in RUNTIME_SUBDIRS.values())
    if is_remote(view.location):
        # Streamed from the store; only a model whose manifest was written (whole) is served.
        files = stored_model_files(get_settings(), view.location)
        if files is None or "config.json" not in files:
            raise _files_missing(model_id)
        if fmt == "hf":
            return iter_stored_model_tar_gz(get_settings(), view.location, files,
                                            include=lambda name: not name.startswith(skip))
        if fmt not in (formats := _stored_formats(files)):
            raise _no_such_export(model_id, fmt, formats)
        return iter_stored_model_tar_gz(get_settings(), view.location, files,
                                        prefix=f"{EXPORT_DIRS[fmt]}/")
    path = local_model_path(get_settings(), view)  # a built-in's folder made on first use
    if not (path / "config.json").is_file():
        raise _files_missing(model_id)
    if fmt == "hf":
        return iter_tar_gz(path, skip_dirs=RUNTIME_SUBDIRS.values())
    if fmt not in (formats := download_formats(path)):
        raise _no_such_export(model_id, fmt, formats)
    return iter_tar_gz(path / EXPORT_DIRS[fmt])


def _files_missing(model_id: str) -> NotFound:
    return NotFound(f"The files of model {model_id} are missing on the server.",
                    param="model_id", code="model_files_missing")


def local_model_path(settings: Settings, view: ModelView, *, weights: bool = True) -> Path:
    """A local directory of the model to load (predict): the model's own directory, or with a
    remote store its copy in this process's scratch cache, pulled on first use and re-pulled
    when the stored model changes (the path changes with it); `weights=False`: all but the
    weights (its card and curve, for the dashboard). A built-in model converted on first use
    (SmolLM2, from its GGUF) is converted here when `weights` are asked for. Blocking."""
    builtin = get_builtin(view.id) if view.is_builtin else None
    if builtin is not None:
        return builtin.prepare(settings) if weights else builtin.directory(settings)
    try:
        return local_model_dir(settings, view.location, weights=weights)
    except FileNotFoundError as exc:
        raise _files_missing(view.id) from exc


def resolve_model_ref(
    *, session: Session, tenant_id: str, settings: Settings, ref: str, param: str,
    weights: bool = False,
) -> ResolvedModel:
    """A model ref (built-in name, the tenant's `model-…` id, or an allowed local directory).

    `path` is a local directory: with a remote store, a copy pulled from it, with its weights
    only when `weights` is true (the worker's; validating a job needs config and tokenizer).

    Unknown refs, other tenants' ids included, raise InvalidRequest(code="model_not_found").
    """
    model_id: str | None
    builtin = get_builtin(ref)
    row = None if builtin else repository.get_for_tenant(session, tenant_id=tenant_id, model_id=ref)
    if builtin is not None:
        # A GGUF built-in is converted here on its first use (once per data folder).
        path, model_id = builtin.prepare(settings), builtin.id
    elif row is not None:
        model_id = row.id
        try:
            path = local_model_dir(settings, row.path, weights=weights)
        except FileNotFoundError as exc:
            raise InvalidRequest(f"Model {ref!r} cannot be loaded: its files are missing.",
                                 param=param, code="invalid_model") from exc
    elif settings.allow_local_model_paths and _is_model_dir(Path(ref).expanduser()):
        path, model_id = Path(ref).expanduser().resolve(), None
    else:
        hint = " or a local model directory" if settings.allow_local_model_paths else ""
        raise InvalidRequest(
            f"Unknown model {ref!r}: use a model id or built-in name from GET /v1/models{hint}.",
            param=param,
            code="model_not_found",
        )
    try:
        info = inspect_cached(path)
    except (ValueError, OSError) as exc:
        raise InvalidRequest(
            f"Model {ref!r} cannot be loaded: {exc}", param=param, code="invalid_model"
        ) from exc
    return ResolvedModel(path=path, ref=ref, model_id=model_id, info=info)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def register_distilled_model(
    *,
    session: Session,
    tenant_id: str,
    job_id: str,
    model_dir: Path,
    task: str,
    parameters: int,
    size_bytes: int,
    labels: list[str] | None,
    report: dict[str, Any] | None,
    settings: Settings,
    source: Literal["distilled", "finetuned"] = "distilled",
) -> ModelRow:
    """Publish a job's exported directory (its student, or with `source="finetuned"` the teacher
    it fine-tuned) in the store and add its row (the caller commits; on failure it calls
    `unpublish_model_dir` with the row's `path`)."""
    model_id = new_id("model")
    final = publish_model_dir(settings, model_dir, model_id)
    row = ModelRow(
        id=model_id,
        tenant_id=tenant_id,
        task=task,
        source=source,
        source_job=job_id,
        filename=None,
        parameters=parameters,
        size_bytes=size_bytes,
        labels=labels,
        report=report,
        path=final,
        created_at=now(),
    )
    try:
        session.add(row)
        session.flush()
    except BaseException:
        unpublish_model_dir(settings, final, back_to=model_dir)  # the export stays the caller's
        raise
    return row
