# vgen's two front doors: `make demo` and `make test`. Every target installs what it needs, once; a second run
# reuses the venv (.venv/), cargo's target/ folder and the stamps in .stamps/.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := demo

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
CARGO ?= cargo
CFLAGS_STRICT := -Wall -Wextra -Wpedantic -Werror
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))

.PHONY: demo test test-rust test-c test-python build header bench soak test-wan-full env clean

# --- the environment -------------------------------------------------------------------------------------------
# torch from PyPI is the source of libtorch (about 4.6 GB with its CUDA libraries; it runs on the CPU too).
# .venv/libtorch links to the torch package so that .cargo/config.toml can name it without a Python version.
$(STAMPS)/venv: tools/requirements.txt
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.relpath(os.path.dirname(torch.__file__), "$(VENV)"))')" $(VENV)/libtorch
	@touch $@

env: $(STAMPS)/venv

# --- the demo ----------------------------------------------------------------------------------------------------
demo: $(STAMPS)/venv
	$(CARGO) build --release -p vgen-core --bin vgen
	$(TARGET_DIR)/release/vgen --version
	$(TARGET_DIR)/release/vgen devices
	@mkdir -p out
	$(TARGET_DIR)/release/vgen generate --prompt "a red circle moving right" --seed 1 --out out/demo.mp4 --out out/demo.gif

# --- the tests ---------------------------------------------------------------------------------------------------
test: test-rust test-c test-python

test-rust: build
	VGEN_REQUIRE_FFPROBE=1 $(CARGO) test --workspace
	$(TARGET_DIR)/debug/examples/hello | grep '^vgen .* on libtorch 2\.11'

# One debug build of every target of every crate (libvgen.so, the Python extension, binaries, tests, examples),
# with the one feature set `cargo test` uses, so that no test step compiles libtorch's bindings a second time.
build: $(STAMPS)/venv $(STAMPS)/ffmpeg
	$(CARGO) build --workspace --all-targets

# Debian's ffmpeg, for the tests that check our video files with a real tool (ffprobe).
$(STAMPS)/ffmpeg:
	@mkdir -p $(STAMPS)
	command -v ffprobe >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg; }
	@touch $@

# The C and C++ examples are built strictly against the generated header and the shared library, and run.
test-c: build
	@mkdir -p $(TARGET_DIR)/examples-c
	cc $(CFLAGS_STRICT) -std=c11 -Iinclude examples/c/hello.c -L$(TARGET_DIR)/debug -lvgen \
		-Wl,-rpath,$(TARGET_DIR)/debug -o $(TARGET_DIR)/examples-c/hello_c
	c++ $(CFLAGS_STRICT) -std=c++17 -Iinclude examples/cpp/hello.cc -L$(TARGET_DIR)/debug -lvgen \
		-Wl,-rpath,$(TARGET_DIR)/debug -o $(TARGET_DIR)/examples-c/hello_cpp
	$(TARGET_DIR)/examples-c/hello_c | grep '^vgen .* on libtorch 2\.11'
	cc $(CFLAGS_STRICT) -std=c11 -Iinclude examples/c/generate.c -L$(TARGET_DIR)/debug -lvgen \
		-Wl,-rpath,$(TARGET_DIR)/debug -o $(TARGET_DIR)/examples-c/generate_c
	$(TARGET_DIR)/examples-c/generate_c $(TARGET_DIR)/examples-c/generate_c.mp4
	for ex in hello_video game_loop; do \
		cc $(CFLAGS_STRICT) -std=c11 -D_POSIX_C_SOURCE=199309L -Iinclude examples/c/$$ex.c -L$(TARGET_DIR)/debug -lvgen \
			-Wl,-rpath,$(TARGET_DIR)/debug -o $(TARGET_DIR)/examples-c/$$ex || exit 1; \
	done
	$(TARGET_DIR)/examples-c/hello_video $(TARGET_DIR)/examples-c/hello_video.mp4 | tail -2
	$(TARGET_DIR)/examples-c/game_loop
	$(TARGET_DIR)/examples-c/hello_cpp | grep '^vgen .* on libtorch 2\.11'
	@echo "C and C++ examples: ok"

# The extension from `build` is placed in the package folder and the package is installed into the venv in
# development mode (a .pth file, as `pip install -e` makes), then pytest runs against it.
test-python: build
	cp $(TARGET_DIR)/debug/lib_vgen.so bindings/python/vgen/_vgen.abi3.so
	echo "$(CURDIR)/bindings/python" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/vgen-dev.pth"
	$(PY) examples/python/hello.py | grep '^vgen .* on libtorch 2\.11'
	$(PY) -m pytest -q bindings/python/tests tools/shapes/test_world.py

# --- developer targets -------------------------------------------------------------------------------------------
header: $(STAMPS)/venv
	VGEN_BLESS=1 $(CARGO) test -p vgen-ffi --test header

# The real Wan2.1-T2V-1.3B transformer configuration with random weights: every shape, and one step (5.7 GB).
test-wan-full: $(STAMPS)/venv
	$(CARGO) test --release -p vgen-core --test wan_full_size -- --ignored --nocapture

# The long soak: 10,000 chaos jobs with injected faults, then 1,000 generations of the default model in one
# engine; prints its figures (the short form runs in `make test`).
soak: $(STAMPS)/venv
	VGEN_SOAK_JOBS=10000 VGEN_SOAK_GENERATIONS=1000 $(CARGO) test --release -p vgen-core --test soak -- --nocapture --test-threads 1

bench: $(STAMPS)/venv
	$(CARGO) bench -p vgen-benches

clean:
	$(CARGO) clean
	rm -rf $(STAMPS)
