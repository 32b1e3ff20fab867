"""The dashboard at `/ui`: server-rendered page shells (Jinja2) and a small hand-written JS
module per page, all served from this package, so the dashboard works with no internet access
and no build step.

The pages need no key: they hold no tenant data. In the browser the page asks for an API key,
keeps it in session (or local) storage and calls the `/v1` API with it as a Bearer header; every
value from the API is put into the page as text (`textContent`), never as HTML. A strict
Content-Security-Policy (scripts and styles from this origin only) stands behind that.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt

from app.deps import SessionDep, SettingsDep, TenantDep
from app.kit.errors import NotFound
from app.models import service as models_service
from app.ui.schemas import ModelCard

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# Raw HTML in a card is shown as text (`html: False`); markdown-it also refuses javascript: links.
markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

# The files a model card may show as images (`distillation.export.curve.CURVE_FILE`, named here so the
# API does not import matplotlib); anything else in the model's folder is not served this way.
CARD_IMAGES = frozenset({"training_curve.png"})
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)

router = APIRouter(prefix="/ui", include_in_schema=False)


def _page(request: Request, template: str, **context: str) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, {"page": template, **context})
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """The tenant's jobs with their status and progress."""
    return _page(request, "jobs.html")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html")


@router.get("/new", response_class=HTMLResponse)
def new_job_page(request: Request) -> HTMLResponse:
    """Upload files and start a job from the contract's fields."""
    return _page(request, "new.html")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """Stage bars, live curves and events, checkpoints and a cancel button."""
    return _page(request, "job.html", job_id=job_id)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    return _page(request, "models.html")


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: str) -> HTMLResponse:
    """The report, the model card, a download button and a predict box."""
    return _page(request, "model.html", model_id=model_id)


@router.get("/api/models/{model_id}/card", response_model=ModelCard)
def model_card(model_id: str, session: SessionDep, settings: SettingsDep,
               tenant: TenantDep) -> ModelCard:
    """The model's README.md (the model card), as markdown and as HTML with any HTML escaped;
    needs the key like `/v1` (another tenant's model: 404)."""
    view = models_service.get_model(session=session, tenant_id=tenant.id, model_id=model_id)
    # Through the store when there is one (`view.path` is then no local folder).
    readme = models_service.local_model_path(settings, view, weights=False) / "README.md"
    if not readme.is_file():
        return ModelCard(id=view.id, markdown=None, html=None)
    text, size = read_card(readme, limit=settings.card_max_bytes)
    truncated = size > settings.card_max_bytes
    if truncated:
        text += (f"\n\n*(The model card is truncated: the first {settings.card_max_bytes:,} of its "
                 f"{size:,} bytes are shown; download the model for the whole README.md.)*\n")
    return ModelCard(id=view.id, markdown=text, html=render_card(text) if text else None,
                     truncated=truncated, size_bytes=size)


@router.get("/api/models/{model_id}/files/{name}")
def model_card_image(model_id: str, name: str, session: SessionDep, settings: SettingsDep,
                     tenant: TenantDep) -> FileResponse:
    """An image the model card shows (the training curve); the page fetches it with the key."""
    view = models_service.get_model(session=session, tenant_id=tenant.id, model_id=model_id)
    path = models_service.local_model_path(settings, view, weights=False) / name
    if name not in CARD_IMAGES or not path.is_file():
        raise NotFound(f"Model {model_id} has no card image {name!r}.", param="name")
    return FileResponse(path, media_type="image/png")


def read_card(path: Path, *, limit: int) -> tuple[str, int]:
    """The first `limit` bytes of a card as text (an archive may unpack a README of gigabytes:
    neither read nor rendered whole), and the file's size."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit)
    # A cut through a multi-byte character becomes one replacement character.
    return data.decode("utf-8", errors="replace"), size


def render_card(text: str) -> str:
    """A model card as HTML: its YAML front matter shown as a code block, any raw HTML in it
    escaped, links other than http(s)/relative refused (markdown-it's `validateLink`)."""
    text = FRONT_MATTER.sub(lambda m: f"```yaml\n{m.group(1)}\n```\n", text, count=1)
    return markdown.render(text)


def install_ui(app: FastAPI) -> None:
    """Mount the dashboard's pages and its static files (`/ui/static`) on `app`."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui")
