#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs what the tests need
# (Node packages for the flagd reference and the browser tests, a Python venv
# for the OpenFeature SDK test, Debian's Chromium), builds every binary, then
# runs `cargo fmt --check`, `cargo clippy -D warnings` and `cargo test --workspace`.
# Used as is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ -f tests/js/console.test.mjs ] && [ ! -x /usr/bin/chromium ]; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -f tests/js/package-lock.json ]; then
  log "installing Node packages (tests/js)"
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
if [ -x tests/py/setup.sh ]; then
  log "preparing the Python venv (tests/py)"
  tests/py/setup.sh
fi

log "checking the habits (rustfmt, clippy)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building"
cargo build --workspace --all-targets --locked
log "testing"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
