// Reference evaluations for tests/tests/flagd_compat.rs.
//
// Usage: node flagd_eval.mjs DEFINITION.json CONTEXTS.json
//
// Loads the flagd definition into @openfeature/flagd-core (FlagdCore backed by
// its MemoryStorage), resolves every flag for every context and prints one JSON
// array: for each context, an object mapping flag key to
// {value?, variant?, reason, errorCode?}. `value` is left out when flagd-core
// falls back to the caller's default (DISABLED, code default, errors).
import { readFileSync } from 'node:fs';
import { FlagdCore } from '@openfeature/flagd-core';

const [defPath, ctxPath] = process.argv.slice(2);
if (!defPath || !ctxPath) {
  console.error('usage: node flagd_eval.mjs DEFINITION.json CONTEXTS.json');
  process.exit(2);
}

const definition = readFileSync(defPath, 'utf8');
const contexts = JSON.parse(readFileSync(ctxPath, 'utf8'));

const quiet = { error() {}, warn() {}, info() {}, debug() {} };
const core = new FlagdCore(undefined, quiet);
core.setConfigurations(definition);

const CODE_DEFAULT = Symbol('code default');
const typeOf = (flag) => {
  const first = flag.variants.values().next().value;
  return typeof first; // boolean | string | number | object
};

const out = contexts.map((ctx) => {
  const row = {};
  for (const [key, flag] of core.getFlags()) {
    const r = core.resolve(typeOf(flag), key, CODE_DEFAULT, ctx, quiet);
    const entry = { reason: r.reason };
    if (r.value !== CODE_DEFAULT) entry.value = r.value;
    if (r.variant !== undefined) entry.variant = r.variant;
    if (r.errorCode !== undefined) entry.errorCode = r.errorCode;
    row[key] = entry;
  }
  return row;
});

process.stdout.write(JSON.stringify(out));
