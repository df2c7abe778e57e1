# q35local: `make demo` and `make test` work on a fresh machine; `make setup` is what they share.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
DEMO   := demo

.PHONY: setup test demo bench bench-quality lint clean

setup: $(STAMP)

# llama-cpp-python is built from source (no prebuilt binary); pip caches the built wheel,
# so a second setup on the same machine takes seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --no-binary llama-cpp-python -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/q35 make-tiny $(DEMO)/tiny-moe --moe
	$(BIN)/q35 quantize $(DEMO)/tiny-moe -o $(DEMO)/tiny-moe-Q8_0.gguf --quant Q8_0
	$(BIN)/q35 inspect $(DEMO)/tiny-moe-Q8_0.gguf --generate "The capital of France is"

bench: setup
	$(BIN)/python -m bench.convert
	$(BIN)/python -m bench.dryrun

# slow (tens of minutes on 2 cores): the README's quality table
bench-quality: setup
	$(BIN)/python -m bench.quality

lint: setup
	$(BIN)/ruff check q35local quantize tests bench
	$(BIN)/ruff format --check q35local quantize tests bench

clean:
	rm -rf $(DEMO) .pytest_cache
