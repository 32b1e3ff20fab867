# The two commands a new user needs: `make demo` and `make test`.
.PHONY: setup demo demo-chat test lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/distill demo

# The same on a chat model: SmolLM2-135M-Instruct distilled on its own answers and on-policy.
demo-chat: setup
	.venv/bin/distill demo --chat

test: setup
	./scripts/services.sh
	./scripts/browser.sh
	.venv/bin/ruff check .
	.venv/bin/mypy distill_cli app worker distillation client/distill_client
	.venv/bin/lint-imports
	.venv/bin/pytest -q -n 2 --dist loadfile --durations=15

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy distill_cli app worker distillation client/distill_client
	.venv/bin/lint-imports
