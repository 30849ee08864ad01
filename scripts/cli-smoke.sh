#!/usr/bin/env bash
# Drive every `tally` subcommand against a fresh node, as the collective, a lab, a
# publisher and an auditor would, and fail on the first unexpected answer.
# Usage: scripts/cli-smoke.sh [path to the tally binary]
set -euo pipefail
tally="${1:-${CARGO_TARGET_DIR:-target}/debug/tally}"
work="$(mktemp -d)"
# SIGTERM is a graceful shutdown (final checkpoint, memtables written to table files):
# wait for it to finish before removing the data it is still writing.
trap 'kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
export TALLY_NODE="http://127.0.0.1:$port"
cd "$work"
"$tally" keygen --out collective.key >/dev/null
"$tally" keygen --out lab.key >/dev/null
"$tally" keygen --out publisher.key >/dev/null
"$tally" keygen --out auditor.key >/dev/null
pin="$("$tally" keygen --out other.key)" # a key that is not the collective's
"$tally" node --data data --key-file collective.key --listen "127.0.0.1:$port" 2>node.log &
node_pid=$!
for _ in $(seq 50); do curl -sf "$TALLY_NODE/healthz" >/dev/null && break; sleep 0.1; done
origin="smoke.tally.example/collective"
"$tally" genesis --key collective.key --origin "$origin" --name "Smoke Collective"
"$tally" admit --key collective.key --id 1 --role lab --name "Smoke Lab" --participant-key lab.key
"$tally" admit --key collective.key --id 10 --role publisher --name "Smoke Press" --participant-key publisher.key
"$tally" admit --key collective.key --id 90 --role auditor --name "Smoke Audit" --participant-key auditor.key
"$tally" register --key publisher.key --prefix https://press.example/ --articles 500 --words 700 --tier premium
now=$(($(date +%s) * 1000))
cat > terms.json <<TERMS
{"lab": 1, "name": "Smoke licence", "scope": ["ai-all"], "start_ms": $((now - 86400000)), "end_ms": $((now + 86400000)),
 "licence": "transactional", "basis": "every-fetch", "rate": {"per_article": "0.01"},
 "tier_multipliers": {"premium": "2", "standard": "1", "commodity": "0.5"},
 "credit_limit": "1", "fee_bps": 1000, "distribution": "per-usage"}
TERMS
contract="$("$tally" contract --key collective.key --terms terms.json | sed -n 's/^contract id //p')"
[ -n "$contract" ] || { echo "no contract id (already recorded?)"; exit 1; }
"$tally" accept --key lab.key --contract "$contract"
"$tally" deposit --key collective.key --to 1 --amount 10 --reference smoke-1
"$tally" submit --key lab.key --lab 1 --contract "$contract" --usage ai-input https://press.example/a https://press.example/b https://other.example/c | tee submit.out
grep -q "charged 0.020000" submit.out
# Outputs go to files before grep -q reads them: grep -q exits at its first match, and a
# tally still writing into the closed pipe would fail with a broken pipe.
"$tally" quote --key lab.key --lab 1 --contract "$contract" --url https://press.example/z --usage ai-train >quote.out
grep -q '"amount": "0.020000"' quote.out
"$tally" statement --key publisher.key --party 10 --period 0 >statement.out
grep -q '"total": "0.036000"' statement.out
"$tally" close-period --key collective.key --period 0 --payout-min 0.01
"$tally" payout --key collective.key --period 0 --to 10 --confirm ach-smoke
sleep 1.2 # let the idle node sign a checkpoint over the last entries
key_hex="$(curl -s "$TALLY_NODE/v1/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["collective_key"])')"
"$tally" verify --key publisher.key --party 10 --period 0 --pin "$key_hex" --origin "$origin" --state verify-state
"$tally" export --key auditor.key --out export
"$tally" audit --dir export --pin "$key_hex" --origin "$origin"
# The replayed state is kept in a scratch directory, inside the export or where --scratch
# says, and removed after.
mkdir scratch
"$tally" audit --dir export --scratch scratch --pin "$key_hex" --origin "$origin" >/dev/null
leftover="$(find export scratch -name '.audit-state-*')"
[ -z "$leftover" ] || { echo "the audit left its scratch state behind: $leftover"; exit 1; }
"$tally" --json audit --key auditor.key --pin "$key_hex" --origin "$origin" >audit.json
grep -q '"ok": true' audit.json
# The wrong pinned key must fail the audit with exit status 2.
set +e
"$tally" audit --dir export --pin "$(sed -n 1p <<<"$pin")" --origin "$origin" >/dev/null
status=$?
set -e
[ "$status" -eq 2 ] || { echo "audit under a wrong key exited $status, not 2"; exit 1; }
# An export cut short (read record by record) is an error naming the cut, not an audit of
# the part that is there.
cp -r export cut-export
truncate -s -3 cut-export/entries.bin
set +e
"$tally" audit --dir cut-export --pin "$key_hex" --origin "$origin" >/dev/null 2>cut.err
status=$?
set -e
[ "$status" -eq 1 ] && grep -q "export cut inside a record" cut.err \
    || { echo "audit of a cut export exited $status: $(cat cut.err)"; exit 1; }
echo "cli smoke test: every subcommand answered as expected"
