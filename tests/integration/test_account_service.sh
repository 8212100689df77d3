#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_service.sh - mica-account end to end: the service around the routes.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   least privilege between the account and Key Center database roles; readiness: /readyz
#   names the Key Center while it is down (/healthz stays 200); /metrics only on the loopback
#   metrics listener; JSON without Content-Type
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_service
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

alice_setup
# A login that needs a step-up (a new device): /metrics counts the 403 below.
must expect 403 step_up_required POST /v1/login "$(login_body alice@example.com "$PW_A" dev-other)"

# ---------------------------------------------------------------------------------------------
step="8 least privilege"
ACCT_CI="$(mica_service_conninfo "$MICA_TEST_DIR" account "$DB")"
KCR_CI="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")"
denied() { # CONNINFO QUERY
	if sql "$1" "$2" >"$W/psql.out" 2>&1; then check_fail "allowed: $2"; fi
	grep -q 'permission denied' "$W/psql.out" || check_fail "$2: $(cat "$W/psql.out")"
	echo "ok - $step: as $(sql "$1" 'SELECT current_user'): $2 -> permission denied"
}
denied "$ACCT_CI" "SELECT * FROM keycenter.key"
denied "$ACCT_CI" "SELECT * FROM keycenter.audit"
denied "$ACCT_CI" "INSERT INTO account.recycled_number VALUES ('x', current_date)"
denied "$KCR_CI" "SELECT * FROM account.user"
denied "$KCR_CI" "SELECT * FROM account.session"
denied "$KCR_CI" "SELECT * FROM account.notification"
denied "$ADMIN_CI" "SET ROLE mica_account; SELECT * FROM keycenter.key"
denied "$ADMIN_CI" "SET ROLE mica_keycenter; SELECT * FROM account.user"
[[ "$(sql "$ACCT_CI" "SELECT count(*) > 0 FROM account.user")" == t ]] || check_fail "mica_account reads its own table"


# ---------------------------------------------------------------------------------------------
step="10 readiness and metrics"
# probe URL: status of URL (no client certificate), body in $W/probe.
probe() { curl -sS --max-time 20 --cacert "$MICA_CA" -o "$W/probe" -w '%{http_code}' "$1" || fail "curl $1"; }
# readyz_until STATUS: /readyz results are reused for a second; poll for up to 15 s.
readyz_until() {
	local deadline=$((SECONDS + 15)) st
	until st="$(probe "$AURL/readyz")" && [[ "$st" == "$1" ]]; do
		if ((SECONDS >= deadline)); then
			check_fail "/readyz $st, want $1: $(cat "$W/probe")"
			return 0
		fi
		sleep 0.2
	done
}
readyz_until 200
grep -qx '{"status":"ready"}' "$W/probe" || check_fail "/readyz: $(cat "$W/probe")"
stack_stop keycenter
readyz_until 503
[[ "$(jq -c .failing "$W/probe")" == '[{"dependency":"keycenter","code":"http_error"}]' ]] ||
	check_fail "/readyz with the Key Center down: $(cat "$W/probe")"
[[ "$(probe "$AMURL/readyz")" == 503 ]] || check_fail "metrics listener /readyz: $(cat "$W/probe")"
[[ "$(probe "$AURL/healthz")" == 200 ]] || check_fail "/healthz with the Key Center down: $(cat "$W/probe")"
ok "the Key Center down: /readyz 503 naming it, /healthz 200"
kc_start
readyz_until 200
ok "the Key Center back: /readyz 200"
# /metrics with its per-route login failure counts is not on the public listener.
[[ "$(probe "$AURL/metrics")" == 404 ]] || check_fail "public /metrics: $(cat "$W/probe")"
[[ "$(probe "$AMURL/metrics")" == 200 ]] || check_fail "metrics listener: $(cat "$W/probe")"
grep -q '^mica_http_requests_total{service="account",route="/v1/login",method="POST",code="403"} ' \
	"$W/probe" || check_fail "login counts: $(grep requests_total "$W/probe" | head)"
[[ "$(probe "$AMURL/v1/session")" == 404 ]] || check_fail "the metrics listener served a route"
ok "/metrics 404 on $AURL, served on $AMURL"
# A JSON body without Content-Type is not JSON (a cross-site form post could send it).
status="$(curl -sS --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -H 'Content-Type:' \
	--data-binary "$(login_body alice@example.com "$PW_A" dev-alice)" "$AURL/v1/login")" || check_fail "curl"
[[ "$status" == 415 && "$(jget error.code)" == unsupported_media_type ]] ||
	check_fail "login without Content-Type: $status $(cat "$W/body")"
ok "a login body without Content-Type gets 415"

stack_stop account
stack_stop keycenter
stack_end
