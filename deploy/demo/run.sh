#!/usr/bin/env bash
# Brings up the Opsplane demo on this machine: a collector on embedded SQLite,
# a sample app on :3000, and an agent beside it (local API :7600, proxy :8080
# in front of the app). Prints the URLs, the admin credentials and commands to
# try; Ctrl-C stops everything. State lives in ./demo-data (wiped each run).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DATA="$ROOT/demo-data"

echo "==> building (release)"
cargo build --release --locked -q -p agent -p collector
BIN="$ROOT/target/release"
command -v python3 >/dev/null || { echo "python3 is needed for the sample app (apt-get install python3)"; exit 2; }

for port in 3000 7600 7601 7602 7603 8080; do
  if (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use; stop what runs there and try again"; exit 2
  fi
done

rm -rf "$DATA"; mkdir -p "$DATA"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/opsplane-collector" init --data-dir "$DATA/collector" --admin-token-file "$DATA/admin.token" > "$DATA/init.txt"
PASSWORD=$(sed -n 's/^admin password (shown once): //p' "$DATA/init.txt")
export OPSPLANE_URL=http://127.0.0.1:7602
export OPSPLANE_TOKEN=$(cat "$DATA/admin.token")

"$BIN/opsplane-collector" run --data-dir "$DATA/collector" > "$DATA/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "$OPSPLANE_URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN/opsctl" agents enroll-token --env demo --service shop --expires 1h | tail -1 > "$DATA/enroll.token"
"$BIN/opsctl" flags apply deploy/demo/flags.json --env demo --reason "demo flags" > /dev/null

cat > "$DATA/agent.toml" <<TOML
service = "shop"
environment = "demo"
data_dir = "$DATA/agent"
labels = { region = "local" }

[api]
listen = "127.0.0.1:7600"

[collector]
url = "http://127.0.0.1:7601"
token_file = "$DATA/enroll.token"

[proxy]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"

[[killswitch]]
name = "checkout-payments"
block = [{ method = "POST", path_prefix = "/api/pay" }]
status = 503
retry_after = "120s"
body = "Payments are paused for maintenance"
on_kill = ["/bin/sh", "-c", "echo \"\$(date) payments paused\" >> $DATA/hooks.log"]
on_revive = ["/bin/sh", "-c", "echo \"\$(date) payments resumed\" >> $DATA/hooks.log"]
TOML

python3 deploy/demo/sample_app.py --port 3000 > "$DATA/app.log" 2>&1 &
pids+=($!)
"$BIN/opsplane-agent" run --config "$DATA/agent.toml" > "$DATA/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:7600/readyz >/dev/null 2>&1 && break; sleep 0.1; done

cat <<TXT

Opsplane demo is up.
  app through the agent proxy   http://127.0.0.1:8080/
  agent local API               http://127.0.0.1:7600/v1/status
  collector admin (console/API) http://127.0.0.1:7602/
  public status page            http://127.0.0.1:7603/
  admin login                   user: admin   password: $PASSWORD
  logs and state                $DATA

Try, in another shell:
  export OPSPLANE_URL=$OPSPLANE_URL OPSPLANE_TOKEN=$OPSPLANE_TOKEN PATH=$BIN:\$PATH
  curl -s -X POST localhost:7600/ofrep/v1/evaluate/flags/new-checkout -d '{"context":{"targetingKey":"u1","email":"ann@example.com"}}'
  curl -s -X POST localhost:8080/api/pay                 # 200: paid
  opsctl kill checkout-payments --env demo --reason "processor outage"
  curl -si -X POST localhost:8080/api/pay                # 503 with Retry-After
  opsctl killswitches list --env demo                    # applied by 1 of 1
  opsctl revive checkout-payments --env demo --reason "processor back"
  opsctl flags set banner-color --env demo --default-variant green --reason "brand week"
  opsctl audit list && opsctl audit verify

Ctrl-C stops the demo.
TXT
wait -n "${pids[@]}"
echo "a demo process exited; see the logs in $DATA"
