# The two commands a new user needs: `make demo` and `make test`.
.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/distill demo

test: setup
	./scripts/services.sh
	./scripts/browser.sh
	.venv/bin/ruff check .
	.venv/bin/mypy distill_cli app worker distillation client/distill_client
	.venv/bin/lint-imports
	.venv/bin/pytest -q -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy distill_cli app worker distillation client/distill_client
	.venv/bin/lint-imports
