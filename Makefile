# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format typecheck schema check-schema install clean bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Serve http://127.0.0.1:8000/graphql (migrates, seeds an empty database; embedded PostgreSQL
## when DATABASE_URL is unset).
run: $(STAMP)
	$(BIN)/atlas-gql serve $(ARGS)

## Run the whole test suite (PostgreSQL: TEST_DATABASE_URL, else 127.0.0.1:5432, else embedded).
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/atlas-gql export-schema schema/schema.graphql

check-schema: $(STAMP)
	@tmp=$$(mktemp --suffix=.graphql); $(BIN)/atlas-gql export-schema $$tmp; \
	if ! diff -u schema/schema.graphql $$tmp; then \
		echo "schema/schema.graphql is stale: run 'make schema'"; rm -f $$tmp; exit 1; fi; rm -f $$tmp

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .grimp_cache
