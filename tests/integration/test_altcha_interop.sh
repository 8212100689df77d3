#!/usr/bin/env bash
# test_altcha_interop.sh - ALTCHA interoperability with the real altcha-lib (pinned in
# tests/interop/package.json): a challenge made by mica's C code (tests/peers/altcha_tool) is
# solved by altcha-lib's solveChallenge(), packed exactly as the ALTCHA widget packs it, accepted
# by altcha-lib's own verifySolution() and by mica's verifier; tampered payloads fail with the
# exact verdict code; and a challenge made by altcha-lib's createChallenge() verifies in C too.
set -euo pipefail
BUILD=${MICA_BUILD:-build}
: "${MICA_TEST_DIR:?run through tests/run}"
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok - $*"; }

tool="$BUILD/tests/peers/altcha_tool"
interop=tests/interop
solver="$interop/altcha-solve.mjs"
[ -x "$tool" ] || fail "$tool not built (make all)"
command -v node >/dev/null || fail "node is not installed (run deploy/install-deps)"
[ -f "$interop/node_modules/altcha-lib/package.json" ] ||
	fail "altcha-lib is not installed in $interop (run deploy/install-deps)"
pinned=$(node -p "require('./$interop/package.json').dependencies['altcha-lib']")
installed=$(node -p "require('./$interop/node_modules/altcha-lib/package.json').version")
[ "$pinned" = "$installed" ] || fail "altcha-lib $installed installed, $pinned pinned (run deploy/install-deps)"
ok "altcha-lib $installed (pinned $pinned), node $(node --version)"

dir=$(mktemp -d "$MICA_TEST_DIR/altcha.XXXXXX")
# Keys are ASCII text: altcha-lib takes its HMAC key as a string and signs its UTF-8 bytes.
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$dir/key"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$dir/other-key"

# verify_expect CODE STATUS [NOW]: feed $dir/payload to the C verifier.
verify_expect() {
	local want=$1 want_status=$2 got status=0
	shift 2
	got=$("$tool" verify "$dir/key" "$@" <"$dir/payload" 2>"$dir/verify.err") || status=$?
	[ "$got" = "$want" ] || fail "verdict '$got' (exit $status), want '$want': $(cat "$dir/verify.err")"
	[ "$status" = "$want_status" ] || fail "verdict $got: exit $status, want $want_status"
}

# edit JS: rewrite $dir/good (base64 JSON payload) with a JavaScript statement on `p` into
# $dir/payload, keeping the widget's encoding.
edit() {
	node -e '
		const fs = require("fs");
		const p = JSON.parse(atob(fs.readFileSync(0, "utf8").trim()));
		(new Function("p", process.argv[1]))(p);
		process.stdout.write(btoa(JSON.stringify(p)) + "\n");
	' "$1" <"$dir/good" >"$dir/payload"
}

# 1. C challenge -> altcha-lib solver (and altcha-lib's verifySolution) -> C verifier.
"$tool" create "$dir/key" 20000 300 >"$dir/challenge.json"
node "$solver" --verify-key "$dir/key" <"$dir/challenge.json" >"$dir/good" 2>"$dir/solve.err" ||
	fail "altcha-lib could not solve or verify our challenge: $(cat "$dir/solve.err")"
cp "$dir/good" "$dir/payload"
verify_expect ok 0
ok "C challenge solved by altcha-lib ($(sed 's/^altcha-solve: //' "$dir/solve.err")), accepted by verifySolution() and by C"

# 2. Tampered payloads, each with its exact verdict.
edit 'p.number += 1'
verify_expect wrong_solution 1
ok "number + 1 -> wrong_solution"
edit 'p.signature = (p.signature[0] === "0" ? "1" : "0") + p.signature.slice(1)'
verify_expect bad_signature 1
ok "signature changed -> bad_signature"
edit 'p.salt = p.salt.replace(/expires=(\d+)/, (m, d) => "expires=" + (Number(d) + 3600))'
verify_expect wrong_solution 1
ok "expiry extended in the salt -> wrong_solution"
edit 'p.algorithm = "SHA-1"'
verify_expect unsupported_algorithm 1
ok "algorithm SHA-1 -> unsupported_algorithm"
edit 'delete p.salt'
verify_expect malformed 1
ok "salt missing -> malformed"
printf 'this is not base64!\n' >"$dir/payload"
verify_expect malformed 1
ok "not base64 -> malformed"

# 3. Expiry and key.
cp "$dir/good" "$dir/payload"
expires=$(sed -n 's/.*expires=\([0-9]*\).*/\1/p' "$dir/challenge.json")
[ -n "$expires" ] || fail "no expiry in $(cat "$dir/challenge.json")"
verify_expect ok 0 "$expires"
verify_expect expired 1 "$((expires + 1))"
ok "valid through second $expires, expired after"
got=$("$tool" verify "$dir/other-key" <"$dir/payload" 2>/dev/null) && fail "other key accepted"
[ "$got" = bad_signature ] || fail "other key: verdict '$got', want bad_signature"
ok "another key -> bad_signature"

# 4. A challenge made by altcha-lib's createChallenge() verifies in C.
node "$solver" --create "$dir/key" 20000 300 >"$dir/lib-challenge.json"
node "$solver" <"$dir/lib-challenge.json" >"$dir/payload" 2>"$dir/solve.err" ||
	fail "altcha-lib could not solve its own challenge: $(cat "$dir/solve.err")"
verify_expect ok 0
got=$("$tool" verify "$dir/other-key" <"$dir/payload" 2>/dev/null) && fail "other key accepted"
[ "$got" = bad_signature ] || fail "altcha-lib challenge, other key: '$got'"
ok "altcha-lib challenge ($(cut -c1-60 "$dir/lib-challenge.json")...) verified by C"

echo "test_altcha_interop: all passed"
