#!/usr/bin/env bash
# lib-stack.sh - shared setup of the shell integration tests that run mica daemons against a
# private database on the tests/run services (docs/testing.md). Sourced, never run: tests/run
# skips lib-*.sh.
#
#   stack_begin NAME VAR...       check the environment (VAR... must be set, besides the basics),
#                                 source deploy/lib.sh, make the work directory $W (kept on
#                                 failure), the database name $DB and its superuser conninfo
#                                 $ADMIN_CI, install the EXIT trap and start jget
#   stack_db_create               CREATE DATABASE $DB, mica migrate, service role passwords
#   stack_policy_doc VERSION [EXTRA_PRINCIPALS_JSON]
#                                 the test policy: admin key-admin, officer1/2 security-officer,
#                                 auditor, account a service with account-* keys
#   stack_kc_init POLICY_FILE     mica keycenter init (the harness token, --force) on $DB;
#                                 the audit public key goes to $W/audit.pem
#   stack_kc_env PORT [MPORT]     prints the MICA_KEYCENTER_* assignments of a Key Center on
#                                 PORT (metrics listener on MPORT, default a free one) using $DB
#                                 (one per line, for an array)
#   stack_start NAME URL CMD...   start CMD (env assignments allowed first) in the background,
#                                 output appended to $W/NAME.log, pid in STACK_PID[NAME]; wait
#                                 (30 s at most) until URL/healthz answers 200
#   stack_stop NAME               SIGTERM, wait (30 s at most), require exit status 0
#   jget PATH [FILE]              a JSON value of FILE (default $W/body), see below
#   fail MESSAGE / ok [NOTE]      report with the current $step; fail ends the test (use it
#                                 where later steps depend on what failed); ok says "not ok"
#                                 when a check failed since the previous ok
#   check_fail MESSAGE            report a failed check and go on; stack_end counts them
#   must CMD...                   run CMD with its check_fail calls fatal (setup, or a step
#                                 the rest of the test stands on)
#   stack_end                     the summary: exit 1 if any check failed, else "all passed"
#   sql CONNINFO QUERY            psql -qAt with ON_ERROR_STOP
#
# A test may define stack_on_exit, called first on exit (before daemons are stopped and the
# database is dropped). On failure the last lines of every daemon log are printed.

stack__fail_early() {
	echo "$1: $2" >&2
	exit 1
}

stack_begin() {
	local name="$1" v
	shift
	STACK_NAME="$name"
	for v in MICA_TEST_DIR MICA_BUILD MICA_CA MICA_CERT_SERVER MICA_KEY_SERVER MICA_PG_CONNINFO \
		MICA_PG_HOST MICA_PG_PORT SOFTHSM2_CONF MICA_HSM_MODULE MICA_HSM_TOKEN_LABEL \
		MICA_HSM_PIN_FILE MICA_CERT_ADMIN MICA_KEY_ADMIN "$@"; do
		[[ -n "${!v:-}" ]] || stack__fail_early "$name" "$v is not set; run through tests/run"
	done
	ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
	cd "$ROOT"
	BUILD="$MICA_BUILD"
	MICA="$BUILD/bin/mica"
	[[ -x "$MICA" ]] || stack__fail_early "$name" "$MICA is missing (make all)"
	# tests/run starts its stack in MICA_TEST_DIR; deploy/lib.sh manages the service roles there.
	[[ -s "$MICA_TEST_DIR/secrets/pgpass" ]] ||
		stack__fail_early "$name" "$MICA_TEST_DIR is not a tests/run stack directory"
	MICA_LOG_PREFIX="$name"
	# shellcheck source=deploy/lib.sh
	. "$ROOT/deploy/lib.sh"
	W="$(mktemp -d "$MICA_TEST_DIR/$name.XXXXXX")"
	DB="mica_${name//[^a-z0-9]/_}_$$"
	ADMIN_CI="$MICA_PG_CONNINFO dbname=$DB"
	declare -gA STACK_PID=()
	step="setup"
	trap stack__cleanup EXIT
	stack__jget_start
}

stack__cleanup() {
	local rc=$? n p deadline
	trap - EXIT
	if declare -F stack_on_exit >/dev/null; then stack_on_exit || true; fi
	if [[ -n "${JGET_PID:-}" ]]; then kill "$JGET_PID" 2>/dev/null || true; fi
	for n in "${!STACK_PID[@]}"; do
		p="${STACK_PID[$n]}"
		[[ -n "$p" ]] || continue
		kill -TERM "$p" 2>/dev/null || true
		deadline=$((SECONDS + 10))
		while mica_pid_alive "$p" && ((SECONDS < deadline)); do sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	psql "$MICA_PG_CONNINFO" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
	if ((rc != 0)); then
		if ((STACK_CHECKS_FAILED > 0)); then
			echo "$STACK_NAME.sh: $STACK_CHECKS_FAILED failed check(s) before the end" >&2
		fi
		for n in "$W"/*.log; do
			[[ -f "$n" ]] || continue
			echo "--- last lines of $n" >&2
			tail -n 30 "$n" >&2 || true
		done
	else
		rm -rf "$W"
	fi
	exit "$rc"
}

fail() {
	echo "FAIL (${step:-?}): $*" >&2
	exit 1
}
# A failed check is reported at once and counted; the test goes on, so that one failure does
# not hide the others. Under `must` it is fatal, like fail.
STACK_CHECKS_FAILED=0
check_fail() {
	echo "FAIL (${step:-?}): $*" >&2
	if [[ -n "${STACK_MUST:-}" ]]; then exit 1; fi
	STACK_CHECKS_FAILED=$((STACK_CHECKS_FAILED + 1))
}
must() {
	local STACK_MUST=1
	"$@"
}
stack_end() {
	if ((STACK_CHECKS_FAILED > 0)); then
		echo "$STACK_NAME.sh: $STACK_CHECKS_FAILED check(s) failed" >&2
		STACK_CHECKS_FAILED=0 # reported: the EXIT trap need not say it again
		exit 1
	fi
	echo "$STACK_NAME.sh: all checks passed"
}
# ok NOTE: the checks since the previous ok passed ("ok - ..."), or some failed ("not ok - ...").
STACK_OK_MARK=0
ok() {
	if ((STACK_CHECKS_FAILED > STACK_OK_MARK)); then
		echo "not ok - ${step:-?}${1:+: $1} ($((STACK_CHECKS_FAILED - STACK_OK_MARK)) failed check(s) above)"
	else
		echo "ok - ${step:-?}${1:+: $1}"
	fi
	STACK_OK_MARK=$STACK_CHECKS_FAILED
}
sql() { psql "$1" -X -v ON_ERROR_STOP=1 -qAtc "$2"; }

# jget PATH [FILE]: the JSON value at PATH (dot-separated; integers index arrays; "#" as the last
# element gives a length) in FILE (default: $W/body). Strings are printed raw, anything else as
# JSON (sorted keys); a missing member prints __absent__, a file that is not JSON __not_json__.
# One python3 process answers every query (on fds 7 and 8): starting one per query is slow.
stack__jget_start() {
	cat >"$W/jget.py" <<'PY'
import json, sys
def get(path, f):
    try:
        v = json.load(open(f))
    except Exception:
        return "__not_json__"
    for p in [x for x in path.split(".") if x]:
        if p == "#":
            v = len(v)
            break
        try:
            v = v[int(p)] if isinstance(v, list) else v[p]
        except (KeyError, IndexError, ValueError, TypeError):
            return "__absent__"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
for line in sys.stdin:
    path, f = line.rstrip("\n").split("\t", 1)
    print(get(path, f).replace("\n", "\\n"), flush=True)
PY
	coproc JGET { exec python3 "$W/jget.py"; }
	exec 7>&"${JGET[1]}" 8<&"${JGET[0]}"
}
jget() {
	local line
	printf '%s\t%s\n' "$1" "${2:-$W/body}" >&7
	IFS= read -r line <&8 || fail "jget: the JSON helper is gone"
	printf '%s\n' "$line"
}

stack_db_create() {
	sql "$MICA_PG_CONNINFO" "CREATE DATABASE $DB" >/dev/null
	"$MICA" migrate --db "$ADMIN_CI" >"$W/migrate.out" 2>&1 || fail "migrate: $(cat "$W/migrate.out")"
	mica_pg_service_roles "$MICA_TEST_DIR" "$DB"
}

stack_policy_doc() {
	cat <<EOF
{"version": $1, "description": "$STACK_NAME",
 "principals": {
  "admin": {"role": "key-admin"},
  "officer1": {"role": "security-officer"},
  "officer2": {"role": "security-officer"},
  "auditor": {"role": "auditor"},
  "account": {"role": "service",
              "keys": {"account-*": ["encrypt", "decrypt", "rewrap", "datakey", "hmac", "read"]}}${2:+,
  $2}
 }}
EOF
}

stack_kc_init() {
	"$MICA" keycenter init --db "$ADMIN_CI" --force --policy "$1" \
		--audit-pubkey-out "$W/audit.pem" >"$W/init.out" 2>"$W/init.err" ||
		fail "keycenter init: $(cat "$W/init.err")"
	grep -q 'Policy version [0-9]* is active' "$W/init.out" || fail "init output: $(cat "$W/init.out")"
}

stack_kc_env() {
	printf '%s\n' \
		MICA_LOG_LEVEL=info \
		"MICA_KEYCENTER_HTTP_PORT=$1" \
		"MICA_KEYCENTER_HTTP_METRICS_PORT=${2:-0}" \
		"MICA_KEYCENTER_HTTP_CERT_FILE=$MICA_CERT_SERVER" \
		"MICA_KEYCENTER_HTTP_KEY_FILE=$MICA_KEY_SERVER" \
		"MICA_KEYCENTER_HTTP_CLIENT_CA_FILE=$MICA_CA" \
		"MICA_KEYCENTER_DB_CONNINFO=$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")" \
		MICA_KEYCENTER_DB_PASSWORD_FILE= \
		"MICA_KEYCENTER_HSM_MODULE=$MICA_HSM_MODULE" \
		"MICA_KEYCENTER_HSM_TOKEN_LABEL=$MICA_HSM_TOKEN_LABEL" \
		"MICA_KEYCENTER_HSM_PIN_FILE=$MICA_HSM_PIN_FILE" \
		MICA_KEYCENTER_ALERTS_WEBHOOK_URL=
}

# stack_account_setup: what a test of mica-account stands on. A database, the Key Center
# started on a free port with the account service's three keys (created by admin), an ALTCHA key
# in $W/altcha.key, and ACCT_ENV: the environment of a mica-account on a free port against them,
# with small Argon2id parameters, the development outbox and the breached-password fixtures.
# STACK_POLICY_EXTRA (optional) adds principals to the policy (stack_policy_doc's second argument).
# Sets KPORT KURL KMURL KC_ENV APORT AURL AMURL ACCT_ENV (KMURL and AMURL: the metrics listeners);
# needs KC_BIN. A test appends its own settings to
# ACCT_ENV (for env, a later assignment of a name wins).
stack_account_setup() {
	local k st
	stack_db_create
	stack_policy_doc 1 "${STACK_POLICY_EXTRA:-}" >"$W/policy.json"
	stack_kc_init "$W/policy.json"
	mica_free_port KPORT
	mica_free_port APORT
	mica_free_port KMPORT
	mica_free_port AMPORT
	KURL="https://localhost:$KPORT"
	# shellcheck disable=SC2034 # AURL, the metrics URLs and ACCT_ENV are for the sourcing test
	AURL="https://localhost:$APORT"
	# shellcheck disable=SC2034
	KMURL="https://localhost:$KMPORT"
	# shellcheck disable=SC2034
	AMURL="https://localhost:$AMPORT"
	mapfile -t KC_ENV < <(stack_kc_env "$KPORT" "$KMPORT")
	stack_start keycenter "$KURL" "${KC_ENV[@]}" "$KC_BIN" --config deploy/mica.conf.example
	for k in account-pii account-index account-pepper; do
		st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" --cert "$MICA_CERT_ADMIN" \
			--key "$MICA_KEY_ADMIN" -H 'Content-Type: application/json' -d '{"owner":"account"}' \
			"$KURL/v1/keys/$k")"
		[[ "$st" == 201 ]] || fail "creating $k as admin: $st $(cat "$W/body")"
	done
	(umask 077 && openssl rand -hex 32 | tr -d '\n' >"$W/altcha.key")
	# shellcheck disable=SC2034
	ACCT_ENV=(
		MICA_LOG_LEVEL=info
		"MICA_ACCOUNT_HTTP_PORT=$APORT"
		"MICA_ACCOUNT_HTTP_METRICS_PORT=$AMPORT"
		"MICA_ACCOUNT_HTTP_CERT_FILE=$MICA_CERT_SERVER"
		"MICA_ACCOUNT_HTTP_KEY_FILE=$MICA_KEY_SERVER"
		"MICA_ACCOUNT_HTTP_CLIENT_CA_FILE=$MICA_CA"
		"MICA_ACCOUNT_DB_CONNINFO=$(mica_service_conninfo "$MICA_TEST_DIR" account "$DB")"
		MICA_ACCOUNT_DB_PASSWORD_FILE=
		"MICA_ACCOUNT_REDIS_SOCKET=$MICA_REDIS_SOCKET"
		MICA_ACCOUNT_REDIS_USER=account
		"MICA_ACCOUNT_REDIS_PASSWORD_FILE=$MICA_REDIS_PASSWORD_FILE_ACCOUNT"
		"MICA_ACCOUNT_KEYCENTER_URL=$KURL"
		"MICA_ACCOUNT_KEYCENTER_CA_FILE=$MICA_CA"
		"MICA_ACCOUNT_KEYCENTER_CERT_FILE=$MICA_CERT_ACCOUNT"
		"MICA_ACCOUNT_KEYCENTER_KEY_FILE=$MICA_KEY_ACCOUNT"
		MICA_ACCOUNT_PASSWORD_POLICY=miui
		MICA_ACCOUNT_PASSWORD_BLOCKLIST_DIR=tests/fixtures/breached
		MICA_ACCOUNT_PASSWORD_ARGON2_MEMORY_KIB=8192
		MICA_ACCOUNT_PASSWORD_ARGON2_ITERATIONS=2
		MICA_ACCOUNT_PASSWORD_ARGON2_PARALLELISM=1
		"MICA_ACCOUNT_RISK_ALTCHA_KEY_FILE=$W/altcha.key"
		MICA_ACCOUNT_NOTIFY_EMAIL=outbox
		MICA_ACCOUNT_NOTIFY_SMS=outbox
	)
}

# stack_push_setup: the Key Center (policy: push may HMAC under push-index and encrypt/decrypt
# under push-content; both keys created) started as "keycenter", and PUSH_ENV, the environment of
# a mica-push on port PPORT (URL PURL, Key Center at KURL) for
# `stack_start push "$PURL" "${PUSH_ENV[@]}" "$PUSH_BIN" --config deploy/mica.conf.example`.
# Needs stack_db_create first. Sets KPORT KURL PPORT PURL PUSH_CI PUSH_BIN KC_BIN, and BPORT: the
# port of its MQTT broker ([push.broker], server certificate MICA_CERT_SERVER).
# shellcheck disable=SC2034
stack_push_setup() {
	local k st
	PUSH_BIN="$BUILD/bin/mica-push"
	KC_BIN="$BUILD/bin/mica-keycenter"
	for k in "$PUSH_BIN" "$KC_BIN"; do [[ -x "$k" ]] || fail "$k is missing (make all)"; done
	stack_policy_doc 1 '"push": {"role": "service", "keys": {"push-index": ["hmac"], "push-content": ["encrypt", "decrypt"]}}' \
		>"$W/policy.json"
	stack_kc_init "$W/policy.json"
	mica_free_port KPORT
	mica_free_port PPORT
	mica_free_port BPORT
	KURL="https://localhost:$KPORT"
	PURL="https://localhost:$PPORT"
	local -a kc_env
	mapfile -t kc_env < <(stack_kc_env "$KPORT")
	stack_start keycenter "$KURL" "${kc_env[@]}" "$KC_BIN" --config deploy/mica.conf.example
	for k in push-index push-content; do
		st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" --cert "$MICA_CERT_ADMIN" \
			--key "$MICA_KEY_ADMIN" -H 'Content-Type: application/json' -d '{"owner":"push"}' \
			"$KURL/v1/keys/$k")"
		[[ "$st" == 201 ]] || fail "creating $k as admin: $st $(cat "$W/body")"
	done
	PUSH_CI="$(mica_service_conninfo "$MICA_TEST_DIR" push "$DB")"
	PUSH_ENV=(
		MICA_LOG_LEVEL=info
		"MICA_PUSH_HTTP_PORT=$PPORT"
		MICA_PUSH_HTTP_METRICS_PORT=0
		"MICA_PUSH_HTTP_CERT_FILE=$MICA_CERT_SERVER"
		"MICA_PUSH_HTTP_KEY_FILE=$MICA_KEY_SERVER"
		"MICA_PUSH_DB_CONNINFO=$PUSH_CI"
		MICA_PUSH_DB_PASSWORD_FILE=
		"MICA_PUSH_REDIS_SOCKET=$MICA_REDIS_SOCKET"
		MICA_PUSH_REDIS_USER=push
		"MICA_PUSH_REDIS_PASSWORD_FILE=$MICA_REDIS_PASSWORD_FILE_PUSH"
		"MICA_PUSH_KEYCENTER_URL=$KURL"
		"MICA_PUSH_KEYCENTER_CA_FILE=$MICA_CA"
		"MICA_PUSH_KEYCENTER_CERT_FILE=$MICA_CERT_PUSH"
		"MICA_PUSH_KEYCENTER_KEY_FILE=$MICA_KEY_PUSH"
		"MICA_PUSH_BROKER_PORT=$BPORT"
		"MICA_PUSH_BROKER_CERT_FILE=$MICA_CERT_SERVER"
		"MICA_PUSH_BROKER_KEY_FILE=$MICA_KEY_SERVER"
	)
}

stack_start() {
	local name="$1" url="$2" pid deadline st
	shift 2
	printf '\n=== start %s\n' "$(date -u +%FT%TZ)" >>"$W/$name.log"
	env "$@" </dev/null >>"$W/$name.log" 2>&1 7>&- 8<&- &
	pid=$!
	STACK_PID[$name]="$pid"
	deadline=$((SECONDS + 30))
	while :; do
		st="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$MICA_CA" "$url/healthz")" || true
		[[ "$st" == 200 ]] && return 0
		mica_pid_alive "$pid" || fail "$name exited during start: $(tail -n 20 "$W/$name.log")"
		((SECONDS < deadline)) || fail "$name not healthy after 30 s: $(tail -n 20 "$W/$name.log")"
		sleep 0.1
	done
}

stack_stop() {
	local name="$1" pid="${STACK_PID[$1]:-}" deadline=$((SECONDS + 30)) rc=0
	[[ -n "$pid" ]] || return 0
	kill -TERM "$pid"
	while mica_pid_alive "$pid"; do
		((SECONDS < deadline)) || fail "$name ignored SIGTERM for 30 s"
		sleep 0.1
	done
	wait "$pid" || rc=$?
	STACK_PID[$name]=""
	((rc == 0)) || fail "$name exited with status $rc after SIGTERM"
}
