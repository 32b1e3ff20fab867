"""What the API returns, as typed objects.

Each model keeps the fields it does not declare (`extra="allow"`): a server newer than this
client adds fields without breaking it, and `obj.model_extra` / `obj.to_dict()` still show them.
Declared fields follow the contract (`api-v1.md`); most have defaults so that an older server
that leaves one out still parses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

T = TypeVar("T")

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class APIObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        """The object as the server sent it (unknown fields included, defaults not added)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Page(APIObject, Generic[T]):
    """`{"object": "list", "data": [...], "has_more": ...}`; pass `last_id` as `after` for the next.

    Iterating a page returned by a list call yields every item across pages, fetching the next
    page when this one is used up (`for job in client.jobs.list(): ...`); `.data` is this page's
    items and `len(page)` their number.
    """

    object: str = "list"
    data: list[T] = Field(default_factory=list)
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
    _next_page: Callable[[str], Page[T]] | None = PrivateAttr(default=None)

    def with_next(self, fetch: Callable[[str], Page[T]]) -> Page[T]:
        """This page, able to fetch the one after it: `fetch(after)` returns the next page."""
        self._next_page = fetch
        return self

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]  # items, not pydantic's fields
        page: Page[T] = self
        while True:
            yield from page.data
            if not (page.has_more and page.last_id and page._next_page is not None):
                return
            page = page._next_page(page.last_id)

    def iter_pages(self) -> Iterator[Page[T]]:
        """This page and every one after it."""
        page: Page[T] | None = self
        while page is not None:
            yield page
            page = (page._next_page(page.last_id) if page.has_more and page.last_id
                    and page._next_page is not None else None)


class FileObject(APIObject):
    id: str
    object: str = "file"
    filename: str = ""
    bytes: int = 0
    purpose: str = ""
    format: str = ""
    num_records: int = 0
    columns: list[str] = Field(default_factory=list)
    created_at: int = 0


class Deleted(APIObject):
    id: str
    object: str = ""
    deleted: bool = True


class JobProgress(APIObject):
    stage: str | None = None
    percent: float = 0.0
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    eta_seconds: float | None = None


class JobErrorInfo(APIObject):
    code: str = ""
    message: str = ""


class Job(APIObject):
    id: str
    object: str = "distillation.job"
    status: str
    task: str = ""
    teacher: dict[str, Any] = Field(default_factory=dict)
    student: dict[str, Any] = Field(default_factory=dict)
    training_file: str = ""
    validation_file: str | None = None
    transfer_file: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    distillation: dict[str, Any] = Field(default_factory=dict)
    # Language-model jobs: how answers are written, and prompts the teacher writes (or None).
    generation: dict[str, Any] | None = None
    data_generation: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, Any] = Field(default_factory=dict)
    result_model: str | None = None
    teacher_model: str | None = None
    error: JobErrorInfo | None = None
    created_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None

    @property
    def finished(self) -> bool:
        """True once the job is succeeded, failed or cancelled (it will not change again)."""
        return self.status in FINAL_STATUSES


class JobEvent(APIObject):
    id: str
    object: str = "distillation.job.event"
    created_at: int = 0
    level: Literal["info", "warning", "error"] | str = "info"
    type: str = "message"
    message: str = ""
    data: dict[str, Any] | None = None


class Checkpoint(APIObject):
    id: str
    object: str = "distillation.job.checkpoint"
    step: int = 0
    epoch: int = 0
    created_at: int = 0
    train_loss: float | None = None
    size_bytes: int | None = None


class Model(APIObject):
    id: str
    object: str = "model"
    task: str = ""
    source: str | None = None
    owned_by: str | None = None
    source_job: str | None = None
    parameters: int = 0
    size_bytes: int = 0
    labels: list[str] | None = None
    report: dict[str, Any] | None = None
    created_at: int = 0


class Prediction(APIObject):
    """A classifier's `label`/`score`/`scores`, or a language model's generated `text`."""

    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    text: str | None = None


class Usage(APIObject):
    """Tokens a chat model read (`prompt_tokens`) and wrote (`completion_tokens`) for an answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Predictions(APIObject):
    object: str = "list"
    model: str | None = None
    data: list[Prediction] = Field(default_factory=list)
    usage: Usage | None = None  # a streamed answer's `completion` event carries it
