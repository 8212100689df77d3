#!/usr/bin/env bash
# lib-cloudsync.sh - what the shell tests of mica-cloudsync share, on top of lib-account.sh (a
# real account service issues the sessions). Sourced, never run: tests/run skips lib-*.sh.
#
#   cs_begin NAME     account_begin with the cloudsync principal in the policy (datakey and
#                     decrypt on cloudsync-user, which admin creates), mica-account started, and
#                     CS_ENV: the environment of a mica-cloudsync on CSPORT (URL CSURL)
#   cs_start          start mica-cloudsync ("cloudsync" on $CSURL) with CS_ENV
#   sreq / sexpect    req / expect (lib-account.sh) against mica-cloudsync
#   login_token DEVICE [KIND]
#                     a new session of alice (PW_A) from DEVICE, app or web; prints the token

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"

cs_begin() {
	STACK_POLICY_EXTRA='"cloudsync": {"role": "service", "keys": {"cloudsync-user": ["datakey", "decrypt"]}}'
	account_begin "$1"
	local v st
	for v in MICA_REDIS_PASSWORD_FILE_CLOUDSYNC MICA_CERT_CLOUDSYNC MICA_KEY_CLOUDSYNC; do
		[[ -n "${!v:-}" ]] || fail "$v is not set; run through tests/run"
	done
	CS_BIN="$BUILD/bin/mica-cloudsync"
	[[ -x "$CS_BIN" ]] || fail "$CS_BIN is missing (make all)"
	st="$(curl -sS -o "$W/body" -w '%{http_code}' --cacert "$MICA_CA" --cert "$MICA_CERT_ADMIN" \
		--key "$MICA_KEY_ADMIN" -H 'Content-Type: application/json' -d '{"owner":"cloudsync"}' \
		"$KURL/v1/keys/cloudsync-user")"
	[[ "$st" == 201 ]] || fail "creating cloudsync-user as admin: $st $(cat "$W/body")"
	account_start
	mica_free_port CSPORT
	CSURL="https://localhost:$CSPORT"
	CS_CI="$(mica_service_conninfo "$MICA_TEST_DIR" cloudsync "$DB")"
	# shellcheck disable=SC2034 # for the sourcing test
	CS_ENV=(
		MICA_LOG_LEVEL=info
		"MICA_CLOUDSYNC_HTTP_PORT=$CSPORT"
		MICA_CLOUDSYNC_HTTP_METRICS_PORT=0
		"MICA_CLOUDSYNC_HTTP_CERT_FILE=$MICA_CERT_SERVER"
		"MICA_CLOUDSYNC_HTTP_KEY_FILE=$MICA_KEY_SERVER"
		"MICA_CLOUDSYNC_DB_CONNINFO=$CS_CI"
		MICA_CLOUDSYNC_DB_PASSWORD_FILE=
		"MICA_CLOUDSYNC_REDIS_SOCKET=$MICA_REDIS_SOCKET"
		MICA_CLOUDSYNC_REDIS_USER=cloudsync
		"MICA_CLOUDSYNC_REDIS_PASSWORD_FILE=$MICA_REDIS_PASSWORD_FILE_CLOUDSYNC"
		"MICA_CLOUDSYNC_KEYCENTER_URL=$KURL"
		"MICA_CLOUDSYNC_KEYCENTER_CA_FILE=$MICA_CA"
		"MICA_CLOUDSYNC_KEYCENTER_CERT_FILE=$MICA_CERT_CLOUDSYNC"
		"MICA_CLOUDSYNC_KEYCENTER_KEY_FILE=$MICA_KEY_CLOUDSYNC"
		"MICA_CLOUDSYNC_AUTH_INTROSPECT_URL=$AURL/v1/introspect"
		"MICA_CLOUDSYNC_AUTH_CA_FILE=$MICA_CA"
		"MICA_CLOUDSYNC_AUTH_CERT_FILE=$MICA_CERT_CLOUDSYNC"
		"MICA_CLOUDSYNC_AUTH_KEY_FILE=$MICA_KEY_CLOUDSYNC"
	)
}

# cs_start [ENV...]: ENV... after CS_ENV (a later assignment wins).
# shellcheck disable=SC2120 # tests may pass settings
cs_start() { stack_start cloudsync "$CSURL" "${CS_ENV[@]}" "$@" "$CS_BIN" --config deploy/mica.conf.example; }

sreq() { req -u "$CSURL" "$@"; }
sexpect() {
	local want="$1" code="$2"
	shift 2
	expect "$want" "$code" -u "$CSURL" "$@"
}

login_token() {
	must expect 200 - POST /v1/login "$(login_body alice@example.com "$PW_A" "$1" \
		"{session_kind: \"${2:-app}\"}")" >&2
	jget token
}
