#!/bin/sh
# Creates tests/py/.venv with the pinned OpenFeature Python SDK and OFREP
# provider used by tests/tests/openfeature_sdk.rs. Idempotent: re-running
# only installs what is missing or differs from requirements.txt.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$here/.venv/bin/python" -c 'import openfeature.contrib.provider.ofrep, openfeature.api' 
echo "tests/py/.venv ready: $("$here/.venv/bin/python" -m pip freeze --disable-pip-version-check | tr '\n' ' ')"
