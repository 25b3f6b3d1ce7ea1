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

.PHONY: demo test test-rust test-c test-python test-server build header bench bench-side soak fuzz test-wan-full env clean
.PHONY: test-c-plain test-c-package test-c-asan test-c-valgrind package-config lint install install-files test-install
.PHONY: gpu-check gpu-check-prepare gpu-check-dry test-csharp test-player

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
test: lint test-rust test-c test-python test-server test-install test-csharp test-player gpu-check-dry

# The gates every change passes: rustfmt's layout (rustfmt.toml) and clippy with every warning an error, over
# every target of every crate; and the `vgen` command's own dependencies stay out of libvgen and the Python
# extension (they come with vgen-core's `cli` feature, which those crates do not ask for).
lint: $(STAMPS)/venv
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	for crate in vgen-ffi vgen-python; do \
		if $(CARGO) tree -p $$crate -e normal --prefix none | grep -E '^(clap|ctrlc) '; then \
			echo "$$crate depends on the vgen command's dependencies"; exit 1; fi; \
	done

test-rust: build $(STAMPS)/redis
	VGEN_REQUIRE_FFPROBE=1 $(CARGO) test --workspace
	$(TARGET_DIR)/debug/examples/hello | grep '^vgen .* on libtorch 2\.11'

# One debug build of every target of every crate (libvgen.so, the Python extension, binaries, tests, examples),
# with the one feature set `cargo test` uses, so that no test step compiles libtorch's bindings a second time.
build: $(STAMPS)/venv $(STAMPS)/ffmpeg
	$(CARGO) build --workspace --all-targets

# Debian packages the tests use, each installed once when its command is missing (with sudo when not root).
# Used as `command -v X >/dev/null || $(APT_INSTALL) PACKAGE...; }`.
APT_INSTALL = { sudo_=""; [ "$$(id -u)" = 0 ] || sudo_=sudo; $$sudo_ apt-get update -qq && \
	$$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

# ffmpeg, for the tests that check our video files with a real tool (ffprobe).
$(STAMPS)/ffmpeg:
	@mkdir -p $(STAMPS)
	command -v ffprobe >/dev/null || $(APT_INSTALL) ffmpeg; }
	@touch $@

# Chromium and its driver, for the server page's browser test (selenium drives Debian's own; nothing is downloaded).
$(STAMPS)/chromium:
	@mkdir -p $(STAMPS)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || $(APT_INSTALL) chromium chromium-driver; }
	@touch $@

# cmake and pkg-config, for the tests of vgen's package files; valgrind, for the C tests.
$(STAMPS)/cmake:
	@mkdir -p $(STAMPS)
	command -v cmake >/dev/null && command -v pkg-config >/dev/null || $(APT_INSTALL) cmake pkg-config; }
	@touch $@

# Mono's C# compiler and runtime, for the C# binding's test; SDL2's headers and library, for the player.
$(STAMPS)/mono:
	@mkdir -p $(STAMPS)
	command -v mcs >/dev/null && command -v mono >/dev/null || $(APT_INSTALL) mono-mcs mono-runtime; }
	@touch $@

$(STAMPS)/sdl2:
	@mkdir -p $(STAMPS)
	command -v sdl2-config >/dev/null || $(APT_INSTALL) libsdl2-dev; }
	@touch $@

$(STAMPS)/valgrind:
	@mkdir -p $(STAMPS)
	command -v valgrind >/dev/null || $(APT_INSTALL) valgrind; }
	@touch $@

# redis-server (and redis-cli), for the Redis backend's tests, which start their own servers on loopback.
$(STAMPS)/redis:
	@mkdir -p $(STAMPS)
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null || $(APT_INSTALL) redis-server redis-tools; }
	@touch $@

# The C and C++ examples and the C tests (ffi/tests/c/), each built strictly against the generated header and the
# shared library and run by ffi/tests/c/run.sh: as they are, under AddressSanitizer and UBSan, and the misuse test
# under valgrind (the representative subset: it calls every function; valgrind takes 35-55 s a program, so
# `make test-c-valgrind` runs all of them); then hosts that find vgen through pkg-config and through CMake.
test-c: test-c-plain test-c-asan test-c-package $(STAMPS)/valgrind
	TARGET_DIR=$(TARGET_DIR) ffi/tests/c/run.sh valgrind misuse
	@echo "C and C++ examples and tests: ok"

test-c-plain: build $(STAMPS)/redis
	TARGET_DIR=$(TARGET_DIR) ffi/tests/c/run.sh plain

test-c-asan: build $(STAMPS)/redis
	TARGET_DIR=$(TARGET_DIR) ffi/tests/c/run.sh asan

test-c-valgrind: build $(STAMPS)/valgrind $(STAMPS)/redis
	TARGET_DIR=$(TARGET_DIR) ffi/tests/c/run.sh valgrind

# A host built through `pkg-config --cflags --libs vgen`, and one through CMake's find_package(vgen), from the
# files `make package-config` writes into the build tree.
test-c-package: build package-config $(STAMPS)/cmake
	@mkdir -p $(TARGET_DIR)/c/pkg-config
	PKG_CONFIG_PATH=$(PKGCONFIG_DIR) pkg-config --exists --print-errors 'vgen = $(VGEN_VERSION)'
	cc $(CFLAGS_STRICT) -std=c11 examples/c/hello.c $$(PKG_CONFIG_PATH=$(PKGCONFIG_DIR) pkg-config --cflags --libs vgen) \
		-o $(TARGET_DIR)/c/pkg-config/hello_c
	$(TARGET_DIR)/c/pkg-config/hello_c | grep '^vgen .* on libtorch 2\.11'
	@# A fresh build folder each time: CMake's cache remembers the source folder, and the target folder may be
	@# shared by clones at other paths (CI keeps it in a cache).
	rm -rf $(TARGET_DIR)/c/cmake
	cmake -S ffi/tests/cmake -B $(TARGET_DIR)/c/cmake -Dvgen_DIR=$(CMAKE_PACKAGE_DIR) >/dev/null
	cmake --build $(TARGET_DIR)/c/cmake
	$(TARGET_DIR)/c/cmake/hello_c | grep '^vgen .* on libtorch 2\.11'
	$(TARGET_DIR)/c/cmake/hello_video_cpp $(TARGET_DIR)/c/cmake/hello_video.mp4 | tail -1

# pkg-config's vgen.pc and CMake's vgen package (vgenConfig.cmake, vgenConfigVersion.cmake, the imported target
# vgen::vgen) for the build tree, from the templates in ffi/packaging/. They name libvgen.so in target/debug, which
# `make build` makes.
PKGCONFIG_DIR := $(TARGET_DIR)/debug/pkgconfig
CMAKE_PACKAGE_DIR := $(TARGET_DIR)/debug/cmake/vgen
VGEN_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
PACKAGE_SUBST := sed -e 's|@PREFIX@|$(CURDIR)|g' -e 's|@LIBDIR@|$(TARGET_DIR)/debug|g' -e 's|@VERSION@|$(VGEN_VERSION)|g' \
	-e 's|@INCLUDEDIR@|$(CURDIR)/include|g' -e "s|@LIBTORCH_LIB@|$$(realpath $(VENV)/libtorch/lib)|g" \
	-e 's|@PKGCONFIG_DIR@|$(PKGCONFIG_DIR)|g' -e 's|@CMAKE_PACKAGE_DIR@|$(CMAKE_PACKAGE_DIR)|g'

package-config:
	@mkdir -p $(PKGCONFIG_DIR) $(CMAKE_PACKAGE_DIR)
	$(PACKAGE_SUBST) ffi/packaging/vgen.pc.in > $(PKGCONFIG_DIR)/vgen.pc
	$(PACKAGE_SUBST) ffi/packaging/vgenConfig.cmake.in > $(CMAKE_PACKAGE_DIR)/vgenConfig.cmake
	$(PACKAGE_SUBST) ffi/packaging/vgenConfigVersion.cmake.in > $(CMAKE_PACKAGE_DIR)/vgenConfigVersion.cmake

# The extension from `build` is placed in the package folder and the package is installed into the venv in
# development mode (a .pth file, as `pip install -e` makes), then pytest runs against it. VGEN_CLI is the `vgen`
# command of the same build, whose frames the tests compare with the extension's. --pip-install adds
# tests/test_install.py: `pip install ./bindings/python` into a fresh environment that sees the venv's torch, built
# by maturin with the dev profile in the same target folder (about 30 s after a `make build`, on 2 cores).
test-python: build
	cp $(TARGET_DIR)/debug/lib_vgen.so bindings/python/vgen/_vgen.abi3.so
	echo "$(CURDIR)/bindings/python" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/vgen-dev.pth"
	$(PY) examples/python/hello.py | grep '^vgen .* on libtorch 2\.11'
	VGEN_CLI=$(TARGET_DIR)/debug/vgen CARGO_TARGET_DIR=$(TARGET_DIR) \
		$(PY) -m pytest -q --pip-install bindings/python/tests tools/shapes/test_world.py tools/shapes/test_train.py tools/shapes/test_evaluate.py tools/shapes/test_default_model.py \
		tools/shapes/test_storyboard.py

# The HTTP and WebSocket service in examples/server: its integration tests (servers in the test process and the
# built binary under SIGTERM; test-rust runs them too, with its unit tests), then the guide's aiohttp client
# (tests/test_client.py) against the built binary. The test binary is the one `build` made, found through cargo's
# JSON messages: `cargo test -p vgen-server` (or `--test server`) would resolve features for fewer targets and
# rebuild the dependencies, vgen-core and tch included.
test-server: build $(STAMPS)/chromium
	test_bin=$$($(CARGO) test --workspace --no-run --message-format=json | $(PY) -c 'import json, sys; \
		print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" \
		and m["target"]["name"] == "server" and "vgen-server" in m["package_id"] and m.get("executable")])'); \
		test -x "$$test_bin" && "$$test_bin"
	VGEN_SERVER=$(TARGET_DIR)/debug/vgen-server $(PY) -m pytest -q examples/server/tests/test_client.py examples/server/tests/test_openai.py examples/server/tests/test_vertex.py \
		examples/server/tests/test_page.py

# --- installing ----------------------------------------------------------------------------------------------------
# `make install PREFIX=...` (default /usr/local; DESTDIR is honoured) builds the release libvgen and `vgen`, then
# installs: lib/libvgen.so and lib/libvgen.a, include/vgen.h and vgen.hpp, lib/pkgconfig/vgen.pc, the CMake package
# in lib/cmake/vgen, bin/vgen, and the shipped models in share/vgen/models, where the installed `vgen` and libvgen
# find them (core/src/models/search_path.rs). The binaries keep an rpath to the libtorch they were built against
# (the venv's torch package) and libvgen.so also looks beside itself ($ORIGIN). `install-files` copies an existing
# build (INSTALL_FROM, default the release folder) without building; `make test-install` uses it on the debug build.
PREFIX ?= /usr/local
INSTALL_FROM ?= $(TARGET_DIR)/release
INSTALL_ROOT = $(DESTDIR)$(PREFIX)
INSTALL_SUBST := sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@INCLUDEDIR@|$${prefix}/include|g' -e 's|@LIBDIR@|$${prefix}/lib|g' \
	-e 's|@VERSION@|$(VGEN_VERSION)|g' -e 's|@PKGCONFIG_DIR@|$(PREFIX)/lib/pkgconfig|g' \
	-e 's|@CMAKE_PACKAGE_DIR@|$(PREFIX)/lib/cmake/vgen|g' -e "s|@LIBTORCH_LIB@|$$(realpath $(VENV)/libtorch/lib)|g"
CMAKE_INSTALL_SUBST := sed -e 's|@INCLUDEDIR@|$${_vgen_prefix}/include|g' -e 's|@LIBDIR@|$${_vgen_prefix}/lib|g' \
	-e 's|@VERSION@|$(VGEN_VERSION)|g' -e 's|@CMAKE_PACKAGE_DIR@|$(PREFIX)/lib/cmake/vgen|g'

install: $(STAMPS)/venv
	$(CARGO) build --release -p vgen-ffi -p vgen-core
	$(MAKE) --no-print-directory install-files INSTALL_FROM=$(TARGET_DIR)/release

install-files:
	@test -f $(INSTALL_FROM)/libvgen.so -a -f $(INSTALL_FROM)/libvgen.a -a -x $(INSTALL_FROM)/vgen || \
		{ echo "no libvgen.so, libvgen.a and vgen in $(INSTALL_FROM): run make install (or make build)"; exit 1; }
	install -d $(INSTALL_ROOT)/bin $(INSTALL_ROOT)/lib/pkgconfig $(INSTALL_ROOT)/lib/cmake/vgen \
		$(INSTALL_ROOT)/include $(INSTALL_ROOT)/share/vgen/models
	install -m 755 $(INSTALL_FROM)/vgen $(INSTALL_ROOT)/bin/vgen
	install -m 755 $(INSTALL_FROM)/libvgen.so $(INSTALL_ROOT)/lib/libvgen.so
	install -m 644 $(INSTALL_FROM)/libvgen.a $(INSTALL_ROOT)/lib/libvgen.a
	install -m 644 include/vgen.h include/vgen.hpp $(INSTALL_ROOT)/include/
	$(INSTALL_SUBST) ffi/packaging/vgen.pc.in > $(INSTALL_ROOT)/lib/pkgconfig/vgen.pc
	$(CMAKE_INSTALL_SUBST) ffi/packaging/vgenConfig.cmake.in > $(INSTALL_ROOT)/lib/cmake/vgen/vgenConfig.cmake
	$(CMAKE_INSTALL_SUBST) ffi/packaging/vgenConfigVersion.cmake.in > $(INSTALL_ROOT)/lib/cmake/vgen/vgenConfigVersion.cmake
	for m in models/*/; do rm -rf $(INSTALL_ROOT)/share/vgen/models/$$(basename $$m); \
		cp -R $$m $(INSTALL_ROOT)/share/vgen/models/; done
	@echo "installed vgen $(VGEN_VERSION) into $(INSTALL_ROOT)"

# Installs the debug build into a temporary prefix and, with the build folder moved away and from outside the
# source tree, builds and runs a C host (pkg-config, shared and static) and a CMake host against it
# (ffi/tests/install/run.sh).
test-install: build $(STAMPS)/cmake
	TARGET_DIR=$(TARGET_DIR) ffi/tests/install/run.sh

# The C# binding (bindings/csharp/), compiled with Debian's Mono and run as a simulated game: an Update() loop on the
# default model (see bindings/csharp/tests/GameLoop.cs). It prints "N passed, N failed".
test-csharp: build $(STAMPS)/mono
	@mkdir -p $(TARGET_DIR)/csharp
	mcs -nologo -warnaserror -out:$(TARGET_DIR)/csharp/GameLoop.exe bindings/csharp/Vgen/*.cs bindings/csharp/tests/GameLoop.cs
	LD_LIBRARY_PATH=$(TARGET_DIR)/debug timeout 600 mono $(TARGET_DIR)/csharp/GameLoop.exe | tee $(TARGET_DIR)/csharp/GameLoop.log
	grep -q '^[0-9]* passed, 0 failed$$' $(TARGET_DIR)/csharp/GameLoop.log

# The SDL2 player (examples/player/), headless with SDL's offscreen driver: it plays the default model's clip while
# it is made, then checks that the window's pixels are the video's last frame.
test-player: build $(STAMPS)/sdl2
	@mkdir -p $(TARGET_DIR)/player
	cc $(CFLAGS_STRICT) -std=c11 -D_POSIX_C_SOURCE=200809L examples/player/player.c -Iinclude \
		$$(sdl2-config --cflags | sed 's/-I/-isystem /g') -L$(TARGET_DIR)/debug -lvgen -Wl,-rpath,$(TARGET_DIR)/debug \
		$$(sdl2-config --libs) -o $(TARGET_DIR)/player/player
	SDL_VIDEODRIVER=offscreen timeout 600 $(TARGET_DIR)/player/player --check | tee $(TARGET_DIR)/player/player.log
	grep -q '^player: ok$$' $(TARGET_DIR)/player/player.log

# --- developer targets -------------------------------------------------------------------------------------------
header: $(STAMPS)/venv
	VGEN_BLESS=1 $(CARGO) test --workspace --test header

# The real Wan2.1-T2V-1.3B transformer configuration with random weights: every shape, and one step (5.7 GB); and
# Wan2.2-TI2V-5B's, built in bf16, one step with an image frame's tokens at timestep 0 (10 GB).
test-wan-full: $(STAMPS)/venv
	$(CARGO) test --release -p vgen-core --test wan_full_size -- --ignored --nocapture

# The long soak: 10,000 chaos jobs with injected faults, then 1,000 generations of the default model in one
# engine; prints its figures (the short form runs in `make test`). Two malloc arenas keep glibc's per-thread
# fragmentation out of the measure, so that RSS may grow by 1% at most (see core/tests/soak.rs).
soak: $(STAMPS)/venv
	MALLOC_ARENA_MAX=2 VGEN_SOAK_MAX_GROWTH=0.01 VGEN_SOAK_JOBS=10000 VGEN_SOAK_GENERATIONS=1000 \
		$(CARGO) test --release -p vgen-core --test soak -- --nocapture --test-threads 1

# libFuzzer over every fuzz target in core/fuzz (nightly and cargo-fuzz, installed here if missing), each for
# FUZZ_SECONDS (10 minutes by default), starting from the committed corpus; new inputs go to target/fuzz-corpus,
# crashes to core/fuzz/artifacts. `make test` runs the same targets over the corpus for a few seconds on stable.
# The release profile's LTO is turned off for the fuzz build: with it, only the fuzz crate itself was instrumented
# (config_json: 37 coverage points); without it vgen-core, serde_json, tokenizers and safetensors are too (1,667).
# check_coverage.sh fails first if a target's corpus no longer reaches vgen_core functions (lost instrumentation).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := request_json config_json tokenizer model_folder c_api image_bytes gguf lora server_bodies segments
fuzz: $(STAMPS)/venv
	rustup toolchain list | grep -q '^nightly' || { echo "make fuzz needs a nightly toolchain: rustup toolchain install nightly"; exit 1; }
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	core/fuzz/check_coverage.sh $(FUZZ_TARGETS)
	for t in $(FUZZ_TARGETS); do \
		mkdir -p $(TARGET_DIR)/fuzz-corpus/$$t; \
		CARGO_PROFILE_RELEASE_LTO=false $(CARGO) +nightly fuzz run --fuzz-dir core/fuzz --features libfuzzer $$t $(TARGET_DIR)/fuzz-corpus/$$t core/fuzz/corpus/$$t \
			-- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=8192 -timeout=60 || exit 1; \
	done

bench: $(STAMPS)/venv
	$(CARGO) bench -p vgen-benches

# vgen beside diffusers on the same machine, model, settings and seeds (benches/side_by_side/run.py): a table of
# medians and ratios. Installs the reference stack (diffusers, transformers) into the venv on first use.
bench-side: $(STAMPS)/venv $(STAMPS)/reference
	$(CARGO) build --release -p vgen-benches --bin vgen-side
	$(PY) benches/side_by_side/run.py --vgen-side $(TARGET_DIR)/release/vgen-side $(SIDE_ARGS)

# The one-shot GPU check (benches/gpu_check/run.py; benches/README.md says how to run it on a GPU machine).
# gpu-check-prepare puts what a machine with torch but no Rust needs into .gpu/ (git-ignored, under 64 MiB): the
# release vgen-side binary and the wheels of diffusers and its one missing dependency. gpu-check runs the check
# here: on a machine without CUDA that is the dry run (small sizes on the CPU). gpu-check-dry, part of `make
# test`, runs the dry run with the debug binary `make build` already made, proving the script and the binary.
GPU_DIR := .gpu
gpu-check-prepare: $(STAMPS)/venv
	$(CARGO) build --release -p vgen-benches --bin vgen-side
	@mkdir -p $(GPU_DIR)/bin $(GPU_DIR)/whl
	cp $(TARGET_DIR)/release/vgen-side $(GPU_DIR)/bin/
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -d $(GPU_DIR)/whl diffusers==0.42.1 importlib_metadata==8.7.0
	du -sh $(GPU_DIR)

gpu-check: gpu-check-prepare $(STAMPS)/reference
	$(PY) benches/gpu_check/run.py --vgen-side $(GPU_DIR)/bin/vgen-side --out $(TARGET_DIR)/gpu-check.md

gpu-check-dry: build $(STAMPS)/venv
	$(PY) benches/gpu_check/run.py --vgen-side $(TARGET_DIR)/debug/vgen-side --dry-run --runs 1

$(STAMPS)/reference: tools/requirements-reference.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r tools/requirements-reference.txt
	@touch $@

clean:
	$(CARGO) clean
	rm -rf $(STAMPS)
