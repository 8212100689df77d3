# shellcheck shell=bash
# lib-push.sh - shared by the push service's HTTP tests (test_push_*.sh): developer apps made with
# `mica push app create` and developer requests in MiPush's form. Sourced after lib-stack.sh and
# stack_push_setup (it reads KURL and ADMIN_CI), never run (tests/run skips lib-*.sh).
#
#   CLI_KC                        the Key Center options of `mica push app` (the push principal)
#   must_app PACKAGE              an app: APP_ID, APP_SECRET
#   dev [-s SECRET] METHOD PATH [FIELD=VALUE...]
#                                 a developer request as SECRET (default SECRET1); body in
#                                 $W/body, status in $status
#   expect_dev STATUS CODE [-s SECRET] METHOD PATH [FIELD=VALUE...]
#                                 dev, then checks the status and MiPush's envelope: success
#                                 (CODE -) or the error CODE

# shellcheck disable=SC2034 # read by the tests that source this
CLI_KC=(--db "$ADMIN_CI" --kc-url "$KURL" --ca "$MICA_CA" --cert "$MICA_CERT_PUSH" --key "$MICA_KEY_PUSH")

must_app() {
	"$MICA" push app create --package "$1" "${CLI_KC[@]}" >"$W/app.out" 2>"$W/app.err" ||
		fail "app create $1: $(cat "$W/app.err")"
	APP_ID="$(sed -n 's/^app_id: //p' "$W/app.out")"
	APP_SECRET="$(sed -n 's/^app_secret: //p' "$W/app.out")"
	[[ "$APP_ID" =~ ^[1-9][0-9]{18}$ && "$APP_SECRET" =~ ^[A-Za-z0-9_-]{43}$ ]] ||
		fail "app create output: $(cat "$W/app.out")"
}

status=""
dev() {
	local secret="${SECRET1:-}" args
	if [[ "$1" == -s ]]; then
		secret="$2"
		shift 2
	fi
	local method="$1" path="$2"
	shift 2
	args=(-sS --max-time 30 --cacert "$MICA_CA" -o "$W/body" -w '%{http_code}' -X "$method")
	[[ -n "$secret" ]] && args+=(-H "Authorization: key=$secret")
	[[ "$method" == GET ]] && args+=(-G)
	for f in "$@"; do args+=(--data-urlencode "$f"); done
	status="$(curl "${args[@]}" "$PURL$path")"
}

expect_dev() {
	local want="$1" code="$2"
	shift 2
	dev "$@"
	if [[ "$status" != "$want" ]]; then
		check_fail "$*: status $status, want $want: $(cat "$W/body")"
	elif [[ "$code" == - && ("$(jget result)" != ok || "$(jget code)" != 0) ]]; then
		check_fail "$*: not a MiPush success envelope: $(cat "$W/body")"
	elif [[ "$code" != - && ("$(jget error.code)" != "$code" || "$(jget result)" != error ||
		"$(jget reason)" != "$code" || "$(jget code)" != "$want") ]]; then
		check_fail "$*: want error $code with the MiPush envelope: $(cat "$W/body")"
	else
		echo "ok - ${step:-}: $* -> $want $code"
	fi
}
