"""`/v1/models`: the registry (built-in, uploaded and distilled models) and downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import SessionDep, SettingsDep, TenantDep
from app.files.multipart import multipart_openapi, receive_upload
from app.kit.pagination import ListResponse
from app.models import service
from app.models.schemas import ModelDeleted, ModelObject

router = APIRouter(prefix="/models", tags=["models"])

FORMAT_HELP = (
    "`hf`: the Hugging Face directory (safetensors weights, config, tokenizer, model card) that "
    "`AutoModelFor….from_pretrained` loads. `onnx` / `onnx-int8`: the ONNX export (fp32 / dynamic "
    "int8) of a distilled classifier: `model.onnx`, `config.json`, the tokenizer and a README "
    "with an onnxruntime snippet; `runtimes` in the model's report says which it has."
)

UPLOAD_BODY = multipart_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": ".tar.gz of a Hugging Face model directory with safetensors weights, "
            "or a single .gguf file (a causal language model, converted to safetensors)",
        }
    },
    required=["file"],
)


@router.get("", response_model=ListResponse[ModelObject])
def list_models(session: SessionDep, tenant: TenantDep) -> ListResponse[ModelObject]:
    """The built-in models and the tenant's uploaded and distilled models."""
    views = service.list_models(session=session, tenant_id=tenant.id)
    return ListResponse[ModelObject](
        data=[v.to_object() for v in views],
        first_id=views[0].id if views else None,
        last_id=views[-1].id if views else None,
    )


@router.post("", status_code=201, response_model=ModelObject, openapi_extra=UPLOAD_BODY)
async def upload_model(
    request: Request, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> ModelObject:
    """Register a teacher from a .tar.gz (pickles, code and escaping paths are refused: 400
    `invalid_model_archive`) or from a .gguf file, checked from its header before anything is
    allocated and converted to safetensors (a refused file: 400 `invalid_gguf`)."""
    form = await receive_upload(request, max_file_bytes=settings.max_model_upload_bytes)
    try:
        view = await run_in_threadpool(
            lambda: service.create_uploaded_model(
                session=session,
                settings=settings,
                tenant_id=tenant.id,
                filename=form.file.filename,
                archive=form.file.file,
            )
        )
    finally:
        await form.close()
    return view.to_object()


@router.get("/{model_id}", response_model=ModelObject)
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelObject:
    return service.get_model(session=session, tenant_id=tenant.id, model_id=model_id).to_object()


@router.get(
    "/{model_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
def download_model(
    model_id: str, session: SessionDep, tenant: TenantDep,
    format: Annotated[service.DownloadFormat, Query(description=FORMAT_HELP)] = "hf",
) -> StreamingResponse:
    """A .tar.gz of the directory the chosen runtime loads as it is, streamed (members at the
    archive root). A model without the export asked for: 400 naming `format`."""
    chunks = service.download_model(session=session, tenant_id=tenant.id, model_id=model_id,
                                     fmt=format)
    name = model_id if format == "hf" else f"{model_id}-{format}"
    return StreamingResponse(
        chunks,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{name}.tar.gz"'},
    )


@router.delete("/{model_id}", response_model=ModelDeleted)
def delete_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelDeleted:
    """Delete the tenant's model and its files (built-in models: 409)."""
    service.delete_model(session=session, tenant_id=tenant.id, model_id=model_id)
    return ModelDeleted(id=model_id)
