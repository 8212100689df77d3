#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs and PHC strings are single-quoted on purpose
# test_account_delete.sh - mica-account end to end: account deletion.
# Driven with curl against its own fresh database on the tests/run PostgreSQL, the harness
# Redis (ACL user account) and a private Key Center (the harness SoftHSM2 token), with small
# risk thresholds (lib-account.sh):
#   account deletion after a step-up: outbox event account.deleted, rows gone from every table
#   that refers to the account, notice sent, tokens dead
# A failed check is reported and the test goes on (check_fail, expect); it exits 1 at the end
# with the count. Everything it starts is stopped and its database dropped on exit.
set -euo pipefail

# shellcheck source=tests/integration/lib-account.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-account.sh"
account_begin test_account_delete
account_small_limits
account_start
ok "Key Center on $KURL with keys account-pii/-index/-pepper; mica-account on $AURL"

# ---------------------------------------------------------------------------------------------
step="7 deletion"
register dave@example.com 'Dave-pass-1' dev-dave
D_TOKEN="$REG_TOKEN" D_UID="$REG_UID" D_SID="$REG_SID"
must expect 200 - POST /v1/login "$(login_body dave@example.com 'Dave-pass-1' dev-dave)"
D_TOKEN2="$(jget token)"
stale "$D_SID"
must expect 403 step_up_required -t "$D_TOKEN" DELETE /v1/account
SU="$(jget stepup_id)"
expect 200 - POST "/v1/stepup/$SU/send" '{"method": "email"}'
expect 200 - POST "/v1/stepup/$SU/verify" "{\"code\": \"$(code_for dave@example.com)\"}"
# Rows in every table that holds an account's data: security questions, and a burned password
# as a freeze would leave.
expect 200 - -t "$D_TOKEN" PUT /v1/security/questions '{"questions": [{"question": "Pet?", "answer": "Rex"}]}'
sql "$ADMIN_CI" "INSERT INTO account.burned_password (user_id, password_enc)
	SELECT id, password_enc FROM account.user WHERE id = $D_UID" >/dev/null
N_GONE="$(notes dave@example.com 'Your mica account was deleted')"
expect 200 - -t "$D_TOKEN" DELETE /v1/account
[[ "$(jget deleted)" == true ]] || check_fail "delete: $(cat "$W/body")"
[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM outbox.event WHERE topic = 'account.deleted'
	AND payload = '{\"user_id\": $D_UID}'::jsonb")" == 1 ]] || check_fail "no account.deleted event"
[[ "$(notes dave@example.com 'Your mica account was deleted')" == $((N_GONE + 1)) ]] ||
	check_fail "no deletion notice"
# Every table of the account schema that refers to an account, found from the catalogue so a
# new table is covered too.
tables="$(sql "$ADMIN_CI" "SELECT table_name FROM information_schema.columns
	WHERE table_schema = 'account' AND column_name = 'user_id' ORDER BY 1")"
[[ "$tables" == *security_question* && "$tables" == *burned_password* ]] || check_fail "tables: $tables"
for t in user $tables; do
	col=user_id
	[[ "$t" == user ]] && col=id
	[[ "$(sql "$ADMIN_CI" "SELECT count(*) FROM account.$t WHERE $col = $D_UID")" == 0 ]] ||
		check_fail "account.$t still has rows of the deleted user"
done
expect 401 invalid_token -t "$D_TOKEN" GET /v1/sessions
expect 401 invalid_token -t "$D_TOKEN2" GET /v1/sessions
expect 401 invalid_credentials POST /v1/login "$(login_body dave@example.com 'Dave-pass-1' dev-dave)"
ok "account.deleted emitted, rows gone from $(wc -w <<<"user $tables") tables, notice sent after, tokens dead"

stack_stop account
stack_stop keycenter
stack_end
