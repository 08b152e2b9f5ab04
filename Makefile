.PHONY: run test lint format bench
run:  ## backend + Streamlit app on embedded defaults
	scripts/run.sh
test:  ## install, lint, and run every test
	scripts/test.sh
lint:
	.venv/bin/ruff check backend frontend tests bench && .venv/bin/ruff format --check backend frontend tests bench
format:
	.venv/bin/ruff format backend frontend tests bench && .venv/bin/ruff check --fix backend frontend tests bench
bench:
	.venv/bin/python bench/local_model_stream.py
