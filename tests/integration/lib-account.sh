#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# lib-account.sh - what the shell tests of mica-account (tests/integration/test_account*.sh)
# share, on top of lib-stack.sh. Sourced, never run: tests/run skips lib-*.sh.
#
#   account_begin NAME            stack_begin with what an account test needs, the binaries and
#                                 tools checked, the account service's Redis keys cleared (and
#                                 again on exit), stack_account_setup (database, Key Center, keys,
#                                 ACCT_ENV)
#   account_small_limits          appends to ACCT_ENV the small risk thresholds, windows and code
#                                 limits of the feature tests (test_account_<feature>.sh)
#   account_start                 start mica-account ("account" on $AURL) with ACCT_ENV
#   account_start_instance NAME URL ENV...
#                                 another instance, with ENV... after ACCT_ENV (a later
#                                 assignment wins)
#   kc_start                      start the Key Center again (after stack_stop keycenter)
#   req / expect / login_body / complete / register / alice_setup / code_for / wrong_code /
#   bind_contact / notes / solve / stale / fresh / kc_pepper_key / kc_pii / kc_phc / wrapped_of
#                                 requests and facts, documented where they are defined
#
# expect is a check: a wrong status or error code is reported and counted (check_fail) and the
# test goes on; `must expect ...` makes it fatal where later steps stand on the answer.
# register, bind_contact, code_for, solve, stale and fresh are setup: they fail the test.

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"

account_begin() {
	stack_begin "$1" MICA_REDIS_SOCKET MICA_REDIS_PASSWORD_FILE_ACCOUNT MICA_CERT_ACCOUNT \
		MICA_KEY_ACCOUNT MICA_CERT_KEYCENTER MICA_KEY_KEYCENTER MICA_CERT_ROGUE MICA_KEY_ROGUE
	ACCT_BIN="$BUILD/bin/mica-account"
	KC_BIN="$BUILD/bin/mica-keycenter"
	ENVELOPE_OPEN="$BUILD/tests/peers/envelope_open"
	SOLVER="tests/interop/altcha-solve.mjs"
	BREACHED="tests/fixtures/breached"
	local f
	for f in "$ACCT_BIN" "$KC_BIN" "$ENVELOPE_OPEN"; do [[ -x "$f" ]] || fail "$f is missing (make all)"; done
	[[ -f "$SOLVER" && -d tests/interop/node_modules/altcha-lib ]] ||
		fail "$SOLVER or its altcha-lib is missing (deploy/install-deps installs tests/interop)"
	[[ -f "$BREACHED/E38AD" ]] || fail "the breached-password fixture $BREACHED is missing"
	command -v node >/dev/null || fail "node is not installed"
	command -v jq >/dev/null || fail "jq is not installed"
	step="setup"
	redis_clear
	stack_account_setup
}

# The Redis keys of the account service outlive our database: failure and login counters of a
# previous test on the same stack would leak into this one. A test that defines its own
# stack_on_exit calls redis_clear there.
redis_clear() {
	local k
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:*' 2>/dev/null |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}
stack_on_exit() { redis_clear || true; }
# code_limits_clear: forget how many codes were sent per address (5 an hour by default), so one
# account can go through every flow of a test.
code_limits_clear() {
	local k
	mica_redis_cli "$MICA_TEST_DIR" account --scan --pattern 'account:codes:*' |
		while IFS= read -r k; do
			[[ -n "$k" ]] && mica_redis_cli "$MICA_TEST_DIR" account DEL "$k" >/dev/null
		done
}

account_small_limits() {
	# shellcheck disable=SC2054 # a comma list is one value here
	ACCT_ENV+=(
		MICA_ACCOUNT_PASSWORD_PEPPER_KEY_MAX_AGE_S=1
		MICA_ACCOUNT_RISK_CAPTCHA_ACCOUNT_FAILURES=3
		MICA_ACCOUNT_RISK_CAPTCHA_NETWORK_FAILURES=15
		MICA_ACCOUNT_RISK_FAILURE_WINDOW_S=900
		MICA_ACCOUNT_RISK_CAPTCHA_BASE_COST=1000
		MICA_ACCOUNT_RISK_CAPTCHA_MAX_COST=64000
		MICA_ACCOUNT_RISK_CAPTCHA_TTL_S=300
		MICA_ACCOUNT_RISK_STEPUP_NEW_DEVICE=true
		MICA_ACCOUNT_RISK_STEPUP_NEW_NETWORK=true
		MICA_ACCOUNT_RISK_LOGIN_RATE_MAX=30
		MICA_ACCOUNT_RISK_FREEZE_AFTER_STEPUP_FAILURES=2
		MICA_ACCOUNT_SESSION_WEB_IDLE_S=60
		MICA_ACCOUNT_SESSION_RECENT_AUTH_S=30
		MICA_ACCOUNT_CODES_TTL_S=120
		MICA_ACCOUNT_CODES_MAX_ATTEMPTS=3
		MICA_ACCOUNT_INTROSPECT_PRINCIPALS=keycenter,cloudsync
	)
}

account_start() { account_start_instance account "$AURL"; }
account_start_instance() {
	local name="$1" url="$2"
	shift 2
	stack_start "$name" "$url" "${ACCT_ENV[@]}" "$@" "$ACCT_BIN" --config deploy/mica.conf.example
}
kc_start() { stack_start keycenter "$KURL" "${KC_ENV[@]}" "$KC_BIN" --config deploy/mica.conf.example; }

# req [-t TOKEN] [-c PRINCIPAL] [-i SOURCE_IP] [-H HEADER] [-u BASE_URL] METHOD PATH [JSON]: one
# request to mica-account at $AURL, or to the service at BASE_URL (bearer token, client
# certificate of a principal or "rogue", source address on the loopback, one more header). Body
# in $W/body, headers in $W/headers, status in $status.
status=""
req() {
	local token="" who="" iface="" header="" base="$AURL" v
	while [[ "$1" == -? ]]; do
		case "$1" in
		-t) token="$2" ;;
		-c) who="$2" ;;
		-i) iface="$2" ;;
		-H) header="$2" ;;
		-u) base="$2" ;;
		esac
		shift 2
	done
	local args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -D "$W/headers"
		-w '%{http_code}' -X "$1")
	[[ -n "$token" ]] && args+=(-H "Authorization: Bearer $token")
	[[ -n "$header" ]] && args+=(-H "$header")
	[[ -n "$iface" ]] && args+=(--interface "$iface")
	if [[ -n "$who" ]]; then
		v="$(mica_env_name "$who")"
		local cv="MICA_CERT_$v" kv="MICA_KEY_$v"
		args+=(--cert "${!cv}" --key "${!kv}")
	fi
	if (($# >= 3)); then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
	status="$(curl "${args[@]}" "$base$2")" || fail "curl $1 $2 failed"
}

# expect STATUS CODE [req options] METHOD PATH [JSON]: req, then check the status and (unless
# CODE is -) that the error code is CODE. A mismatch is a failed check (check_fail).
expect() {
	local want="$1" code="$2" what got
	shift 2
	req "$@"
	what="$(printf '%s ' "$@" | sed -E 's/(-t [A-Za-z0-9_-]{6})[A-Za-z0-9_-]+/\1…/' | cut -c1-110)"
	if [[ "$status" != "$want" ]]; then
		check_fail "$what: status $status, want $want: $(cat "$W/body")"
		return 0
	fi
	if [[ "$code" != - ]]; then
		got="$(jget error.code)"
		if [[ "$got" != "$code" ]]; then
			check_fail "$what: error code '$got', want $code: $(cat "$W/body")"
			return 0
		fi
	fi
	echo "ok - $step: ${what% } -> $want $code"
}

js() { jq -nc "$@"; }
# login_body LOGIN PASSWORD DEVICE [EXTRA_JQ]: a login request (device name "DEVICE phone").
login_body() {
	js --arg l "$1" --arg p "$2" --arg d "$3" "{login: \$l, password: \$p,
		device: {id: \$d, name: (\$d + \" phone\")}} ${4:+ + $4}"
}
# complete VID CODE PASSWORD [DEVICE]: a register/complete request (device name "Alice phone").
complete() {
	js --arg v "$1" --arg c "$2" --arg p "$3" --arg d "${4:-dev-alice}" \
		'{verification_id: $v, code: $c, password: $p, device: {id: $d, name: "Alice phone"}}'
}
# code_for ADDR: the newest verification code sent to ADDR, read with `mica outbox list`.
code_for() {
	local c
	c="$("$MICA" outbox list --db "$ADMIN_CI" --to "$1" --limit 20 2>/dev/null |
		sed -n 's/.*verification code is \([0-9]\{6\}\)\..*/\1/p' | tail -n 1)"
	[[ "$c" =~ ^[0-9]{6}$ ]] || fail "no verification code for $1 in the outbox"
	printf '%s' "$c"
}
# wrong_code CODE: a six-digit code that differs from CODE.
wrong_code() { printf '%s%s' "${1:0:5}" "$(((${1:5:1} + 1) % 10))"; }
# bind_contact TOKEN phone|email VALUE: binds a security contact with the code sent to it (the
# session must have authenticated recently).
bind_contact() {
	local vid
	must expect 200 - -t "$1" POST "/v1/security/$2" "$(js --arg k "$2" --arg v "$3" '{($k): $v}')"
	vid="$(jget verification_id)"
	must expect 200 - -t "$1" POST "/v1/security/$2/verify" \
		"$(js --arg v "$vid" --arg c "$(code_for "$3")" '{verification_id: $v, code: $c}')"
}
# notes ADDR SUBJECT: how many messages with SUBJECT went to ADDR, once the notice worker has
# delivered every security notice recorded so far (they go out through the outbox, a moment
# after the change).
notes() {
	local deadline=$((SECONDS + 20))
	until [[ "$(sql "$ADMIN_CI" "SELECT (SELECT count(*) FROM outbox.pending WHERE consumer = 'account.notices')
		+ (SELECT count(*) FROM account.notice)")" == 0 ]]; do
		((SECONDS < deadline)) || fail "security notices still pending after 20 s"
		sleep 0.1
	done
	sql "$ADMIN_CI" "SELECT count(*) FROM account.notification WHERE lower(recipient) = lower('$1')
		AND subject = '$2'"
}
now() { date +%s; }
sha256() { printf '%s' "$1" | sha256sum | cut -c1-64; }

# register ADDR PASSWORD DEVICE [POLICY]: the whole registration, by email or (ADDR +...) phone;
# sets REG_TOKEN, REG_ACCOUNT, REG_SID and REG_UID. The device is named $REG_DEVICE_NAME
# (default "test").
register() {
	local kind=email vid
	[[ "$1" == +* ]] && kind=phone
	must expect 200 - POST /v1/register/start "$(js --arg k "$kind" --arg v "$1" '{($k): $v}')"
	vid="$(jget verification_id)"
	must expect 201 - POST /v1/register/complete "$(js --arg v "$vid" --arg c "$(code_for "$1")" \
		--arg p "$2" --arg d "$3" --arg pol "${4:-}" --arg n "${REG_DEVICE_NAME:-test}" \
		'{verification_id: $v, code: $c, password: $p, device: {id: $d, name: $n}}
		+ (if $pol == "" then {} else {password_policy: $pol} end)')"
	# shellcheck disable=SC2034 # for the sourcing test
	REG_TOKEN="$(jget token)"
	# shellcheck disable=SC2034
	REG_ACCOUNT="$(jget account_id)"
	REG_SID="$(jget session_id)"
	# shellcheck disable=SC2034
	REG_UID="$(sql "$ADMIN_CI" "SELECT user_id FROM account.session WHERE id = $REG_SID")"
}

# alice_setup: the account most feature tests stand on: alice@example.com with password
# PW_A='Alice-pass1' from device dev-alice ("Alice phone"); sets PW_A, ALICE_UID, ALICE_NO and
# the REG_* of register.
alice_setup() {
	step="setup"
	PW_A='Alice-pass1'
	REG_DEVICE_NAME="Alice phone" register alice@example.com "$PW_A" dev-alice
	# shellcheck disable=SC2034 # for the sourcing test
	ALICE_UID="$REG_UID" ALICE_NO="$REG_ACCOUNT"
}

# solve CHALLENGE_FILE: the payload altcha-lib's solver builds (verified with altcha-lib too).
solve() {
	node "$SOLVER" --verify-key "$W/altcha.key" <"$1" 2>>"$W/solver.log" ||
		fail "altcha-solve failed: $(tail -n 3 "$W/solver.log")"
}

# stale SESSION_ID: make the session's last authentication an hour old: in PostgreSQL (as
# superuser), and drop the session's Redis cache entry, which carries auth_at and which the
# service reads first for app sessions.
stale() {
	local h
	h="$(sql "$ADMIN_CI" "UPDATE account.session SET auth_at = now() - interval '1 hour' WHERE id = $1
		RETURNING token_hash")"
	[[ "$h" =~ ^[0-9a-f]{64}$ ]] || fail "stale: no session $1"
	mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$h" >/dev/null
}
# fresh SESSION_ID: the opposite, so a slow run (sanitizers) never outlives recent_auth_s (30 s)
# in the middle of a flow.
fresh() {
	local h
	h="$(sql "$ADMIN_CI" "UPDATE account.session SET auth_at = now() WHERE id = $1 RETURNING token_hash")"
	[[ "$h" =~ ^[0-9a-f]{64}$ ]] || fail "fresh: no session $1"
	mica_redis_cli "$MICA_TEST_DIR" account DEL "session:$h" >/dev/null
}

# kc_phc USER_ID: the user's Argon2id PHC string. The row holds "dk1.<wrapped data key>.<envelope>":
# the Key Center unwraps the data key for the account principal (with the key's own context only),
# then the envelope opens bound to the row (tests/peers/envelope_open).
PEPPER_KEY_CTX='{"service": "account", "table": "user", "column": "password", "purpose": "pepper"}'
pepper_aad() { echo "service=account;table=user;column=password;row=$1"; }
kc_pepper_key() { # WRAPPED [CONTEXT_JSON] -> base64 data key (HTTP status in $W/kc.code)
	curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
		-H 'Content-Type: application/json' -o "$W/kc.json" -w '%{http_code}' \
		-d "$(js --arg c "$1" --argjson x "${2:-$PEPPER_KEY_CTX}" '{ciphertext: $c, context: $x}')" \
		"$KURL/v1/decrypt/account-pepper" >"$W/kc.code"
	[[ "$(<"$W/kc.code")" != 200 ]] || jget plaintext "$W/kc.json"
}
kc_pii() { # SEALED COLUMN ROW -> the plaintext (HTTP status in $W/kc.code)
	curl -sS --cacert "$MICA_CA" --cert "$MICA_CERT_ACCOUNT" --key "$MICA_KEY_ACCOUNT" \
		-H 'Content-Type: application/json' -o "$W/kc.json" -w '%{http_code}' \
		-d "$(js --arg c "$1" --arg col "$2" --arg r "$3" '{ciphertext: $c, context: {service:
			"account", table: "user", column: $col, row: $r}}')" \
		"$KURL/v1/decrypt/account-pii" >"$W/kc.code"
	[[ "$(<"$W/kc.code")" != 200 ]] || jget plaintext "$W/kc.json" | base64 -d
}
kc_phc() {
	local enc
	enc="$(sql "$ADMIN_CI" "SELECT password_enc FROM account.user WHERE id = $1")"
	[[ "$enc" =~ ^dk1\.(kc:v[0-9]+:[A-Za-z0-9+/=]+)\.([A-Za-z0-9+/=]+)$ ]] ||
		fail "password_enc of user $1: $enc"
	printf '%s %s' "$(kc_pepper_key "${BASH_REMATCH[1]}")" "${BASH_REMATCH[2]}" |
		"$ENVELOPE_OPEN" "$(pepper_aad "$1")"
}
# wrapped_of USER_ID: the wrapped pepper data key the user's password hash is sealed under.
wrapped_of() { sql "$ADMIN_CI" "SELECT split_part(password_enc, '.', 2) FROM account.user WHERE id = $1"; }
