#!/usr/bin/env bash
# test_cli.sh - the `mica` dispatcher and its services' verbs, without services: `mica --help`
# lists every noun under its service (the generated list of <service>/cli.c), unknown nouns and
# verbs are usage errors (exit 64), and number options are parsed strictly (lib/parse.h):
# "abc", "5x", " 5" and out-of-range values are refused with exit 64 naming the option, before
# any database, HSM or Key Center is contacted (the conninfo and paths given point nowhere).
# Also: the daemons' usage and --print-config, a config error naming its key (exit 2), and the
# Makefile finding a new service directory and its cli.c without an edit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUILD="${MICA_BUILD:-build}"
MICA="$BUILD/bin/mica"
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
step=""
fail() {
	echo "FAIL ($step): $*" >&2
	exit 1
}
ok() { echo "ok - $step: $*"; }
[[ -x "$MICA" ]] || fail "$MICA is missing (make all)"

# expect RC PATTERN ARGS...: runs mica ARGS, wants exit RC and PATTERN (grep -E) in its output.
expect() {
	local want="$1" pattern="$2" rc=0
	shift 2
	"$MICA" "$@" >"$W/out" 2>&1 </dev/null || rc=$?
	((rc == want)) || fail "mica $*: exit $rc, want $want: $(head -n 5 "$W/out")"
	grep -Eq -- "$pattern" "$W/out" || fail "mica $*: no /$pattern/ in: $(head -n 5 "$W/out")"
}

step="help by service"
expect 0 'account service:' --help
for section in 'platform:' 'keycenter service:'; do
	grep -q "^$section" "$W/out" || fail "no $section in mica --help"
done
for noun in migrate outbox recycled keycenter audit; do
	grep -Eq "^  $noun " "$W/out" || fail "mica --help does not list $noun"
done
ok "mica --help lists the platform's and each service's nouns"
expect 64 "unknown command 'nosuch'" nosuch
expect 64 'expected list' outbox nosuch
expect 64 'expected init, unseal, seal-status or migrate-root' keycenter nosuch
ok "unknown nouns and verbs: exit 64"

step="strict numbers"
NOWHERE="host=127.0.0.1 port=1 dbname=none connect_timeout=1"
for v in abc 20x ' 20' 0 10001 99999999999999999999; do
	expect 64 "mica outbox list: --limit must be a whole number in 1..10000, not \"$v\"" \
		outbox list --db "$NOWHERE" --limit "$v"
done
ok "--limit abc, 20x, ' 20', 0, 10001, beyond int64: exit 64 before connecting"
for v in abc 5x -5 17; do
	expect 64 "mica keycenter init: --shares must be a whole number in 2..16, not \"$v\"" \
		keycenter init --policy "$W/none.json" --db "$NOWHERE" --hsm-module "$W/none.so" \
		--token-label none --pin-file "$W/none.pin" --so-pin-file "$W/none.pin" \
		--shares "$v" --threshold 3
done
expect 64 'mica keycenter init: --threshold must be a whole number in 2..16, not "3x"' \
	keycenter init --policy "$W/none.json" --db "$NOWHERE" --hsm-module "$W/none.so" \
	--token-label none --pin-file "$W/none.pin" --so-pin-file "$W/none.pin" --shares 5 \
	--threshold 3x
ok "--shares abc, 5x, -5, 17 and --threshold 3x: exit 64 before the HSM"
expect 64 'mica audit verify: --max-unsigned must be a whole number in 1\.\.[0-9]+, not "1x"' \
	audit verify --pubkey "$W/none.pem" --max-unsigned 1x "$W/none.jsonl"
expect 64 'mica audit verify: --max-unsigned-ms must be a whole number in 1\.\.[0-9]+, not "-1"' \
	audit verify --pubkey "$W/none.pem" --max-unsigned-ms -1 "$W/none.jsonl"
ok "audit verify --max-unsigned 1x, --max-unsigned-ms -1: exit 64"
# The shared Key Center client options (MICA_CLI_KC_OPTIONS): all four are needed by --mac.
expect 64 'mica audit verify: --mac needs --kc-url, --ca, --cert and --key' \
	audit verify --mac --kc-url https://127.0.0.1:1 --ca "$W/none.pem" --cert "$W/none.pem"
ok "audit verify --mac without --key: exit 64 naming the four options"

step="recycled options"
KCOPTS=(--kc-url https://127.0.0.1:1 --ca "$W/none.pem" --cert "$W/none.pem" --key "$W/none.pem")
expect 64 '^mica recycled add: --file belongs to import$' recycled add --file "$W/x"
expect 64 '^mica recycled add: --phone and --on are needed$' recycled add --phone +8613800000001
expect 64 '^mica recycled import: --phone and --on belong to add; the list has them$' \
	recycled import --file "$W/x" --on 2024-01-01
expect 64 '^mica recycled import: --file is needed$' recycled import
MICA_DB_CONNINFO='' expect 64 '^mica recycled add: --db is needed \(or MICA_DB_CONNINFO\)$' \
	recycled add --phone +8613800000001 --on 2024-01-01 "${KCOPTS[@]}"
expect 64 '^mica recycled add: --kc-url, --ca, --cert and --key are needed$' \
	recycled add --db "$NOWHERE" --phone +8613800000001 --on 2024-01-01
expect 64 '^mica recycled add: --on is YYYY-MM-DD$' \
	recycled add --db "$NOWHERE" --phone +8613800000001 --on 2024-1-1 "${KCOPTS[@]}"
ok "add/import option errors: exit 64 naming the problem"

step="daemon skeleton"
for d in keycenter account cloudsync; do
	rc=0
	"$BUILD/bin/mica-$d" >"$W/out" 2>&1 || rc=$?
	if ! { ((rc == 2)) && grep -q "usage: mica-$d --config FILE" "$W/out"; }; then
		fail "mica-$d without arguments: exit $rc: $(cat "$W/out")"
	fi
	"$BUILD/bin/mica-$d" --print-config >"$W/out" || fail "mica-$d --print-config"
	if ! { grep -q "^\[$d.db\]" "$W/out" && grep -q '^;conninfo = ' "$W/out"; }; then
		fail "mica-$d --print-config has no [$d.db] conninfo (the shared fragment)"
	fi
	printf '[%s.http]\nport = 70000\n' "$d" >"$W/bad.conf"
	rc=0
	"$BUILD/bin/mica-$d" --config "$W/bad.conf" >"$W/out" 2>&1 || rc=$?
	if ! { ((rc == 2)) && grep -q "^mica-$d: $d.http.port: 70000 is out of range 0..65535" "$W/out"; }; then
		fail "mica-$d with a bad port: exit $rc: $(cat "$W/out")"
	fi
done
ok "usage and a config error exit 2 naming the key; --print-config shows the shared [*.db]"
step="services found from the tree"
# A copy of the Makefile in a scratch tree with two new service directories (one with verbs)
# beside the tree's own: both become archives and demo's verbs reach bin/mica's list, with no
# edit of the Makefile.
T="$W/tree"
mkdir -p "$T"/{lib,cmd,tests/unit,bench/x,docs,demo,other}
cp Makefile config.mk "$T/"
touch "$T"/lib/a.c "$T"/cmd/mica.c "$T"/tests/unit/test_a.c "$T"/bench/x/y.c "$T"/demo/a.c \
	"$T"/demo/cli.c "$T"/other/b.c
# (make -n of the empty files may fail on a rule; only its variables matter here)
vars="$({ make -C "$T" -pn 2>/dev/null || true; } | grep -E '^(SVC_DIRS|CLI_SVCS) :=')"
grep -qx 'SVC_DIRS := demo other' <<<"$vars" || fail "service directories: $vars"
grep -qx 'CLI_SVCS := demo' <<<"$vars" || fail "services with verbs: $vars"
make -C "$T" -s BUILD=b b/gen/cli_services.c >/dev/null 2>&1 || fail "generating the verb list"
if ! { grep -q '^extern const mica_cli_service demo_cli;$' "$T/b/gen/cli_services.c" &&
	grep -q '&demo_cli,' "$T/b/gen/cli_services.c"; }; then
	fail "verb list: $(cat "$T/b/gen/cli_services.c")"
fi
ok "a new directory is a service and its cli.c's verbs are listed, no Makefile edit"
echo "test_cli.sh: all checks passed"
