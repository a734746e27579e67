# The two commands of the README: `make demo` (train the demo model if needed, then serve it) and
# `make test` (linters, type checks and the whole test suite, slow end-to-end tests included; among them
# tests/test_docs.py builds the docs site with `mkdocs build --strict` and checks that it works offline).
# Both create .venv and install torchship with its demo, hf, dev, docs and torchserve extras on first use.
# `make docs` builds the site into site/ (open site/index.html).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
STORE ?= models
NAME ?= bbc

.PHONY: demo test lint docs install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,demo,hf,docs,torchserve]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@if ! ls $(STORE)/$(NAME)/*/config.json >/dev/null 2>&1; then \
		echo "No '$(NAME)' model in ./$(STORE) yet: training it on the BBC News corpus (a few minutes on 2 cores)."; \
		$(BIN)/torchship train --data bbc-news --store $(STORE) --name $(NAME) || exit $$?; \
	fi
	@echo "Token authorization is on: the keys go to ./key_file.json (owner-only, removed at exit);"
	@echo "management calls need -H \"Authorization: Bearer \$$($(BIN)/torchship key management)\" (lines below)."
	$(BIN)/torchship serve --store $(STORE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
