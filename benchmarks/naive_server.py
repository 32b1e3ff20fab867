"""The naive baseline of `serving.py`: the same student behind a minimal FastAPI app that calls
`transformers.pipeline` once per request, in a plain `def` endpoint (FastAPI's thread pool), the
way a first version of a model server is usually written.

    python benchmarks/naive_server.py --model DIR --port 8001
    POST /predict {"inputs": ["text"]} → {"data": [{"label": ..., "score": ...}]}
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Body(BaseModel):
    inputs: list[str]


def make_app(model_dir: str) -> FastAPI:
    classifier = pipeline("text-classification", model=model_dir, tokenizer=model_dir,
                          device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        return {"data": classifier(body.inputs, truncation=True)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    uvicorn.run(make_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
