#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target of fuzz/ for a short while on
# the stable toolchain and fails on the first crash. Run from the repo root.
#
#   bash .ci/fuzz-smoke.sh                       # each target for 30 s
#   FUZZ_SECONDS=300 bash .ci/fuzz-smoke.sh      # longer
#   FUZZ_TARGETS=entry bash .ci/fuzz-smoke.sh    # one target
#
# See docs/fuzzing.md.
set -euo pipefail

seconds="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-entry payload}"
cargo_fuzz_version="0.13.2"

if [[ ! -f fuzz/Cargo.toml ]]; then
    echo "fuzz-smoke: run me from the repository root (no fuzz/Cargo.toml here)" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz ${cargo_fuzz_version}"
    cargo install cargo-fuzz --version "${cargo_fuzz_version}" --locked
fi

# cargo-fuzz builds with nightly-only flags (-Zsanitizer=address, sanitizer
# coverage). RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

for target in ${targets}; do
    corpus="fuzz/corpus/${target}" # git-ignored; grows across local runs
    seeds="fuzz/seeds/${target}"   # committed starting points
    mkdir -p "${corpus}"
    echo "fuzz-smoke: ${target} for ${seconds} s"
    # libFuzzer exits non-zero on a crash, a leak, a timeout or an RSS blow-up;
    # cargo-fuzz passes that on, prints how to reproduce, and keeps the input
    # in fuzz/artifacts/${target}/. set -e then stops here.
    cargo fuzz run "${target}" "${corpus}" "${seeds}" -- \
        -max_total_time="${seconds}" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1
done

echo "fuzz-smoke: no crash in: ${targets}"
