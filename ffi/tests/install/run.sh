#!/usr/bin/env bash
# `make test-install`: vgen installed the way a C or C++ developer installs it, then used from outside the source
# tree with cargo's build folder moved away, so that nothing installed may point back into the build.
#
# 1. `make install-files` copies the debug build (`make build`'s) into a fresh temporary prefix: the same steps as
#    `make install`, without its release build.
# 2. The installed `vgen` lists and uses the installed default model (share/vgen/models/shapes-tiny), from /tmp,
#    with no $VGEN_MODELS and an empty user data folder.
# 3. A C host built through the installed vgen.pc, linked to libvgen.so and, with `pkg-config --static`, to
#    libvgen.a; and a CMake host through find_package(vgen). Each runs, lists the models, and makes a video with
#    the installed default model.
#
# Environment: TARGET_DIR (cargo's target folder; default target/), CC.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
target=$(cd "$root" && realpath -m "${TARGET_DIR:-target}")
cc=${CC:-cc}
work=$(mktemp -d "${TMPDIR:-/tmp}/vgen-install.XXXXXX")
prefix=$work/prefix
models=$prefix/share/vgen/models

make -C "$root" --no-print-directory install-files PREFIX="$prefix" INSTALL_FROM="$target/debug" >/dev/null
for f in bin/vgen lib/libvgen.so lib/libvgen.a include/vgen.h include/vgen.hpp lib/pkgconfig/vgen.pc \
    lib/cmake/vgen/vgenConfig.cmake lib/cmake/vgen/vgenConfigVersion.cmake share/vgen/models/shapes-tiny/model_index.json; do
    test -e "$prefix/$f" || { echo "install: $f is missing"; exit 1; }
done

# The build folder goes away for the rest of the test (a rename, so it comes back whole, whatever happens).
moved="$target.moved-by-test-install"
test ! -e "$moved" || { echo "install: $moved exists: a previous run was interrupted; move it back to $target"; exit 1; }
mv "$target" "$moved"
restore() { mv "$moved" "$target"; rm -rf "$work"; }
trap restore EXIT

cd "$work"
unset VGEN_MODELS
export XDG_DATA_HOME="$work/no-user-models"
if grep -q "$target" <(readelf -d "$prefix/bin/vgen" "$prefix/lib/libvgen.so"); then
    echo "install: an installed binary's rpath points into the build folder"; exit 1
fi

expect() { # expect WHAT PATTERN TEXT
    grep -Eq "$2" <<<"$3" || { printf 'install: %s: expected /%s/ in:\n%s\n' "$1" "$2" "$3"; exit 1; }
}
default_model='"name":"shapes-tiny","default":true,"test_model":false,"folder":"'"$models"'/shapes-tiny"'

# The command.
expect "vgen --version" '^vgen 0\.' "$("$prefix/bin/vgen" --version)"
expect "vgen models" "$default_model" "$("$prefix/bin/vgen" models --json)"
expect "vgen generate" '"model":"shapes-tiny"' \
    "$("$prefix/bin/vgen" generate --prompt "a red circle moving right" --seed 1 --json --out cli.mp4 | tail -1)"
test -s cli.mp4

# A C host through pkg-config: shared, then static.
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --exists --print-errors vgen
cp "$root/ffi/tests/install/host.c" "$root/ffi/tests/install/CMakeLists.txt" "$work/"
strict=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
# shellcheck disable=SC2046
"$cc" "${strict[@]}" host.c $(pkg-config --cflags --libs vgen) -o host_shared
# shellcheck disable=SC2046
"$cc" "${strict[@]}" host.c $(pkg-config --cflags vgen) "$prefix/lib/libvgen.a" \
    $(pkg-config --static --libs vgen | sed -e 's/\(^\| \)-lvgen\( \|$\)/ /') -o host_static
if ldd host_static | grep -q libvgen; then echo "install: host_static links libvgen.so"; exit 1; fi
# libvgen.so finds the prefix's models from its own location; a host that links libvgen.a into itself has no
# prefix of vgen's to go by, so it names the folder (or relies on the user's data folder).
out=$(./host_shared host_shared.mp4)
expect host_shared "$default_model" "$out"
expect host_shared '"model":"shapes-tiny"' "$out"
out=$(VGEN_MODELS="$models" ./host_static host_static.mp4)
expect host_static "$default_model" "$out"
expect host_static '"model":"shapes-tiny"' "$out"
test -s host_shared.mp4 && test -s host_static.mp4

# A CMake host through find_package(vgen).
cmake -S "$work" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
out=$("$work/cmake-build/host" cmake.mp4)
expect "CMake host" "$default_model" "$out"
expect "CMake host" '"model":"shapes-tiny"' "$out"

echo "make install: ok (vgen, C hosts shared and static through pkg-config, CMake host; all from $prefix)"
