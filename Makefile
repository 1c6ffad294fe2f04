# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The installer: uv, pinned, put into .tools/ by the interpreter's own pip once per clone.
# Bumping it: bump uv_build's range in pyproject.toml's [build-system] with it.
UV_VERSION := 0.13.9
UV_HOME := .tools/uv-$(UV_VERSION)
export UV := $(UV_HOME)/bin/uv
# uv uses $(PYTHON), never a Python it would download.
export UV_PYTHON_DOWNLOADS := never

# `make run` installs the server's lock; every other target the dev lock (a superset), which
# `make run` then keeps using instead of shrinking the environment back.
RUN_STAMP := $(VENV)/.synced-run
DEV_STAMP := $(VENV)/.synced-dev
RUN_ENV := $(if $(wildcard $(DEV_STAMP)),$(DEV_STAMP),$(RUN_STAMP))

.PHONY: run test fuzz lint format typecheck schema check-schema install lock check-lock audit clean

# $(call sync,LOCK[,FLAGS]): make .venv hold exactly LOCK (hash-checked, never re-resolved),
# then the project itself, editable.
define sync
	@test -x $(BIN)/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes $(2) $(1)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
endef

$(UV):
	@echo "bootstrapping uv $(UV_VERSION) into $(UV_HOME) with pip (once per clone)"
	@rm -rf $(UV_HOME).partial .tools/pip
	@pip="$(PYTHON) -m pip"; \
	if ! $(PYTHON) -m pip --version >/dev/null 2>&1; then \
		$(PYTHON) -m venv .tools/pip && pip=".tools/pip/bin/python -m pip"; fi; \
	$$pip install --quiet --disable-pip-version-check --no-warn-script-location \
		--root-user-action=ignore --target $(UV_HOME).partial uv==$(UV_VERSION)
	@rm -rf .tools/pip
	@mv $(UV_HOME).partial $(UV_HOME)

# An environment is remade when its lock changes; `check-lock`, the first prerequisite of
# every target that uses one, stops first when pyproject.toml and the locks disagree.
# Bytecode: Python caches it on first import, which costs less than compiling every installed
# file up front. Where PYTHONDONTWRITEBYTECODE is set it never caches, and each of the many
# interpreters the tests start would recompile every import: there the dev environment is
# compiled at install, as pip always did.
$(DEV_STAMP): requirements-dev.lock | $(UV)
	$(call sync,requirements-dev.lock,$(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode))
	@rm -f $(RUN_STAMP) && touch $@

$(RUN_STAMP): requirements.lock | $(UV)
	$(call sync,requirements.lock)
	@rm -f $(DEV_STAMP) && touch $@

install: check-lock $(DEV_STAMP)

## Serve http://127.0.0.1:8000/graphql (migrates, seeds an empty database; embedded PostgreSQL
## when DATABASE_URL is unset).
run: check-lock $(RUN_ENV)
	$(BIN)/atlas-gql serve $(ARGS)

## Run the whole test suite (PostgreSQL: TEST_DATABASE_URL, else 127.0.0.1:5432, else embedded)
## in TEST_WORKERS pytest-xdist processes (2 by default; 0: in this process; docs/architecture.md,
## "Suite time").
TEST_WORKERS ?= 2
test: check-lock $(DEV_STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup) $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

## Fuzz every query and mutation for longer than the suite does (tests/graph/test_fuzz.py):
## FUZZ_EXAMPLES generated operations per viewer (anonymous, user, admin).
FUZZ_EXAMPLES ?= 2000
fuzz: check-lock $(DEV_STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/graph/test_fuzz.py -x $(ARGS)

lint: check-lock $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: check-lock $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: check-lock $(DEV_STAMP)
	$(BIN)/mypy

schema: check-lock $(DEV_STAMP)
	$(BIN)/atlas-gql export-schema schema/schema.graphql

check-schema: check-lock $(DEV_STAMP)
	@tmp=$$(mktemp --suffix=.graphql); $(BIN)/atlas-gql export-schema $$tmp; \
	if ! diff -u schema/schema.graphql $$tmp; then \
		echo "schema/schema.graphql is stale: run 'make schema'"; rm -f $$tmp; exit 1; fi; rm -f $$tmp

## Re-resolve requirements*.lock from pyproject.toml, keeping every pin that still fits
## (ARGS="--upgrade" moves everything to the newest releases; --upgrade-package NAME one).
lock: | $(UV)
	$(PYTHON) scripts/deps.py lock $(ARGS)

## Fail, saying "run make lock", when pyproject.toml and the lock files disagree.
check-lock:
	@$(PYTHON) scripts/deps.py check

## Check every locked package against the vulnerability database (pip-audit). Exit 0: none
## known; 1: vulnerabilities found; 3: the database was unreachable, nothing is known.
audit: check-lock $(DEV_STAMP)
	@$(BIN)/python scripts/deps.py audit $(ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .grimp_cache
