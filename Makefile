# q35local: `make demo` and `make test` work on a fresh machine; `make setup` is what they share.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
# How llama.cpp is built for this CPU (q35local/llamabuild.py): auto = -march=native minus AMX;
# native = llama.cpp's default, AMX kept if its self-test passes; portable = only the extensions the
# OS reports, generic tuning. Whatever the choice, a build whose self-test dies is replaced.
CPU_BUILD ?= auto
STAMP  := $(VENV)/.setup-done-$(CPU_BUILD)

.PHONY: setup test test-fast demo bench bench-quality lint clean

setup: $(STAMP)

# llama-cpp-python is built from source for this CPU before the project is installed (its wheel is
# cached per user under a key of the build's flags, compiler and CPU, so a second setup takes
# seconds); then a self-test in a child process (an 80-token prefill on 2+ threads) proves the build
# runs here, and a build that dies is replaced by the next safer one.
$(STAMP): pyproject.toml q35local/llamabuild.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m q35local.llamabuild install --cpu $(CPU_BUILD)
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m q35local.llamabuild verify --cpu $(CPU_BUILD)
	rm -f $(VENV)/.setup-done-*
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# the inner loop: unit-sized tests only (tests/conftest.py: FAST_MODULES), well under a minute
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# the tiny model is generated and quantized once; then: will it fit here, and a chat with it
demo: setup $(DEMO)/tiny-moe-Q8_0.gguf
	$(BIN)/q35 fit $(DEMO)/tiny-moe-Q8_0.gguf
	@# in a terminal: the chat; piped or scripted (no terminal to draw on): one headless answer instead
	@if [ -t 0 ] && [ -t 1 ]; then $(BIN)/q35 chat $(DEMO)/tiny-moe-Q8_0.gguf; \
	else $(BIN)/q35 run $(DEMO)/tiny-moe-Q8_0.gguf -p "Hello! Who are you?" -n 64; fi

$(DEMO)/tiny-moe-Q8_0.gguf: | $(STAMP)
	test -f $(DEMO)/tiny-moe/config.json || $(BIN)/q35 make-tiny $(DEMO)/tiny-moe --moe
	$(BIN)/q35 quantize $(DEMO)/tiny-moe -o $(DEMO)/tiny-moe-Q8_0.gguf --quant Q8_0

bench: setup
	$(BIN)/python -m bench.convert
	$(BIN)/python -m bench.dryrun
	$(BIN)/python -m bench.runtime
	$(BIN)/python -m bench.followup
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.cpubuild
	$(BIN)/python -m bench.checks

# slow (tens of minutes on 2 cores): the README's quality table
bench-quality: setup
	$(BIN)/python -m bench.quality

lint: setup
	$(BIN)/ruff check q35local quantize tests bench
	$(BIN)/ruff format --check q35local quantize tests bench
	$(BIN)/mypy

clean:
	rm -rf $(DEMO) .pytest_cache
