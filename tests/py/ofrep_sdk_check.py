"""Resolve flags from a running Opsplane agent through the real OpenFeature
Python SDK and its OFREP provider, and print one JSON object with the
outcome of every case (keyed by case id) on stdout.

Usage: tests/py/.venv/bin/python tests/py/ofrep_sdk_check.py <agent_url>

The assertions live in tests/tests/openfeature_sdk.rs; this script only
drives the SDK and reports what an application would see.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

# (case id, flag type, flag key, caller's default, context or None)
CASES = [
    ("bool-static", "boolean", "bool-flag", False, EvaluationContext("u1")),
    ("bool-no-context", "boolean", "bool-flag", False, None),
    ("string-match", "string", "string-flag", "zzz",
     EvaluationContext("u1", {"email": "ann@example.com"})),
    ("string-default", "string", "string-flag", "zzz",
     EvaluationContext("u1", {"email": "bob@other.org"})),
    ("string-no-key", "string", "string-flag", "zzz",
     EvaluationContext(None, {"email": "ann@example.com"})),
    ("int-match", "integer", "int-flag", -1, EvaluationContext("u1", {"plan": "premium"})),
    ("int-default", "integer", "int-flag", -1, EvaluationContext("u1", {"plan": "free"})),
    ("float-default", "float", "float-flag", -1.5, EvaluationContext("u1")),
    ("float-match", "float", "float-flag", -1.5, EvaluationContext("u1", {"beta": True})),
    ("object-static", "object", "object-flag", {"fallback": True}, EvaluationContext("u1")),
    ("disabled", "boolean", "disabled-flag", True, EvaluationContext("u1")),
    ("disabled-string", "string", "disabled-string-flag", "caller-default", EvaluationContext("u1")),
    ("unknown", "string", "no-such-flag", "fallback", EvaluationContext("u1")),
    ("mismatch-string-as-bool", "boolean", "string-flag", True, EvaluationContext("u1")),
    ("mismatch-float-as-int", "integer", "float-flag", 7, EvaluationContext("u1")),
    ("mismatch-object-as-string", "string", "object-flag", "s", EvaluationContext("u1")),
]
# the fractional rollout, for many users (the Rust side checks each bucket)
for i in range(40):
    CASES.append((f"rollout-user-{i}", "string", "rollout", "none", EvaluationContext(f"user-{i}")))


def resolve(client, kind, key, default, ctx):
    fn = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }[kind]
    return fn(key, default, ctx)


def main():
    if len(sys.argv) != 2:
        print("usage: ofrep_sdk_check.py <agent_url>", file=sys.stderr)
        sys.exit(2)
    api.set_provider(OFREPProvider(sys.argv[1], timeout=5.0))
    client = api.get_client("opsplane-sdk-check")
    out = {}
    for case_id, kind, key, default, ctx in CASES:
        d = resolve(client, kind, key, default, ctx)
        out[case_id] = {
            "flag_key": d.flag_key,
            "value": d.value,
            # Python's own type name, so "float flags come back as float" is checkable
            "value_type": type(d.value).__name__,
            "variant": d.variant,
            "reason": None if d.reason is None else str(d.reason),
            "error_code": None if d.error_code is None else str(d.error_code),
            "error_message": d.error_message,
        }
    json.dump(out, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
