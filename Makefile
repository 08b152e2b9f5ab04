.PHONY: help run test lint typecheck format bench
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
run:  ## backend + Streamlit app on embedded defaults
	scripts/run.sh
test:  ## install, lint, type-check and run every test (what CI runs)
	scripts/test.sh
lint:  ## ruff's checks and formatting, without fixing; the layers and import cycles
	.venv/bin/ruff check backend frontend tests bench && .venv/bin/ruff format --check backend frontend tests bench
	.venv/bin/lint-imports --no-cache
typecheck:  ## mypy over backend, frontend, tests and bench
	.venv/bin/mypy
format:  ## format and apply ruff's safe fixes
	.venv/bin/ruff format backend frontend tests bench && .venv/bin/ruff check --fix backend frontend tests bench
bench:  ## the local model's streaming benchmark (other benchmarks: python -m bench.<name>)
	.venv/bin/python -m bench.local_model_stream
