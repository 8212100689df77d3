#!/usr/bin/env bash
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
# test_cloudsync_carddav.sh - issue 22 item 7: CardDAV over the contacts records, with a client
# nobody here wrote: Debian's vdirsyncer discovers the address book from /dav/ (principal, home
# set, collections) and syncs it both ways with a local directory of vCards, authenticating with
# HTTP Basic whose password is a session token. Contacts written through record sync appear in
# CardDAV and the other way round; deletions go to the recycle bin. Also with curl: the
# well-known redirect, 401 with a Basic challenge, preconditions (412), a bad vCard (415), an
# unsupported report (403), a malformed body (400), another user's address book empty.
set -euo pipefail

# shellcheck source=tests/integration/lib-cloudsync.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-cloudsync.sh"
command -v vdirsyncer >/dev/null || fail "vdirsyncer is not installed (deploy/install-deps)"
cs_begin test_cloudsync_carddav
alice_setup
A1="$REG_TOKEN"
REG_DEVICE_NAME="Bob phone" register bob@example.com 'Bob-pass-1' dev-bob
B1="$REG_TOKEN"
cs_start
ok "mica-account on $AURL, mica-cloudsync on $CSURL"

C=/v1/sync/contacts
BOOK=/dav/addressbooks/contacts
vcard() { # UID FN -> a vCard 3.0
	printf 'BEGIN:VCARD\r\nVERSION:3.0\r\nUID:%s\r\nFN:%s\r\nN:%s;;;;\r\nTEL;TYPE=CELL:+1555%s\r\nEND:VCARD\r\n' \
		"$1" "$2" "$2" "${1:0:4}"
}
# dav [-u USER:PASS] METHOD PATH [BODY [HEADER...]]: a DAV request with alice's token as the
# Basic password (unless -u); body in $W/body, headers in $W/headers, status in $status.
dav() {
	local cred="alice:$A1"
	if [[ "$1" == -u ]]; then
		cred="$2"
		shift 2
	fi
	local m="$1" p="$2" body="${3:-}" args=()
	shift 3 2>/dev/null || shift $#
	for h in "$@"; do args+=(-H "$h"); done
	status="$(curl -sS --max-time 30 --cacert "$MICA_CA" -u "$cred" -o "$W/body" -D "$W/headers" \
		-w '%{http_code}' -X "$m" ${body:+--data-binary "$body"} ${args[@]+"${args[@]}"} "$CSURL$p")" ||
		fail "curl $m $p"
}
want() { # STATUS WHAT
	if [[ "$status" != "$1" ]]; then check_fail "$2: status $status, want $1: $(head -c 300 "$W/body")"; fi
}

# ---------------------------------------------------------------------------------------------
step="1 records to CardDAV"
U1=5f0c2c4e-0b7e-4d6f-9a51-000000000001 U2=5f0c2c4e-0b7e-4d6f-9a51-000000000002
sexpect 201 - -t "$A1" PUT "$C/records/$U1" "$(jq -nc --arg v "$(vcard "$U1" 'Carol Cardholder')" '{data: {vcard: $v}}')"
sexpect 201 - -t "$A1" PUT "$C/records/$U2" "$(jq -nc --arg v "$(vcard "$U2" 'Dan Dialer')" '{data: {vcard: $v}}')"
sexpect 201 - -t "$A1" PUT "$C/records/plain1" '{"data": {"fn": "Plain, Person", "tel": "+15550199"}}'
VD="$W/vds"
mkdir -p "$VD/status" "$VD/local"
cat >"$VD/config" <<EOF
[general]
status_path = "$VD/status/"

[pair contacts]
a = "local"
b = "mica"
collections = ["from b"]

[storage local]
type = "filesystem"
path = "$VD/local/"
fileext = ".vcf"

[storage mica]
type = "carddav"
url = "$CSURL/dav/"
username = "alice@example.com"
password = "$A1"
verify = "$MICA_CA"
EOF
vds() { # the vdirsyncer command line, output in $W/vds.log
	printf '\n$ vdirsyncer %s\n' "$*" >>"$W/vds.log"
	local rc=0
	yes 2>/dev/null | vdirsyncer -c "$VD/config" "$@" >>"$W/vds.log" 2>&1 || rc=${PIPESTATUS[1]}
	return "$rc"
}
vds discover contacts || fail "vdirsyncer discover: $(tail -n 20 "$W/vds.log")"
vds sync || fail "vdirsyncer sync: $(tail -n 20 "$W/vds.log")"
L="$VD/local/contacts"
[[ "$(find "$L" -name '*.vcf' | wc -l)" == 3 ]] || check_fail "local cards: $(ls -la "$L" 2>&1)"
grep -q '^FN:Carol Cardholder' "$L"/*.vcf || check_fail "Carol's card is not local"
grep -q '^FN:Plain\\, Person' "$L"/*.vcf || check_fail "the plain record was not made a vCard: $(cat "$L"/*.vcf)"
ok "vdirsyncer discovered /dav/ and pulled 3 cards (one made from a plain record)"

# ---------------------------------------------------------------------------------------------
step="2 CardDAV to records"
U3=5f0c2c4e-0b7e-4d6f-9a51-000000000003
vcard "$U3" 'Erin Entered' >"$L/$U3.vcf"
f1="$(grep -l '^FN:Dan Dialer' "$L"/*.vcf)"
sed -i 's/^FN:Dan Dialer/FN:Dan Renamed/' "$f1"
rm -f "$(grep -l '^FN:Carol Cardholder' "$L"/*.vcf)"
vds sync || fail "vdirsyncer sync (local changes): $(tail -n 20 "$W/vds.log")"
sexpect 200 - -t "$A1" GET "$C/records/$U3"
grep -q 'FN:Erin Entered' <<<"$(jget data.vcard)" || check_fail "new card as a record: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/records/$U2"
if ! { [[ "$(jget version)" == 2 ]] && grep -q 'FN:Dan Renamed' <<<"$(jget data.vcard)"; }; then
	check_fail "edited card as a record: $(cat "$W/body")"
fi
sexpect 404 record_not_found -t "$A1" GET "$C/records/$U1"
sexpect 200 - -t "$A1" GET "$C/bin"
[[ "$(jq -r '.records[].id' "$W/body")" == "$U1" ]] || check_fail "the deleted card is not in the bin: $(cat "$W/body")"
sexpect 200 - -t "$A1" GET "$C/changes?since=0"
[[ "$(jq '[.changes[] | select(.id | startswith("conflict-"))] | length' "$W/body")" == 0 ]] ||
	check_fail "CardDAV writes left conflict records"
ok "a card created, one edited and one deleted locally: a new record, a new version, one in the bin"

# ---------------------------------------------------------------------------------------------
step="3 both ways again"
sexpect 200 - -t "$A1" -H 'If-Match: "2"' PUT "$C/records/$U2" \
	"$(jq -nc --arg v "$(vcard "$U2" 'Dan From Phone')" '{data: {vcard: $v}}')"
vds sync || fail "vdirsyncer sync (server change): $(tail -n 20 "$W/vds.log")"
grep -q '^FN:Dan From Phone' "$L"/*.vcf || check_fail "the server's edit did not reach the local card"
[[ "$(find "$L" -name '*.vcf' | wc -l)" == 3 ]] || check_fail "local cards after: $(ls "$L")"
before="$(sql "$ADMIN_CI" "SELECT seq FROM cloudsync.user_seq WHERE user_id = $ALICE_UID")"
vds sync || fail "vdirsyncer sync (nothing to do): $(tail -n 20 "$W/vds.log")"
[[ "$(sql "$ADMIN_CI" "SELECT seq FROM cloudsync.user_seq WHERE user_id = $ALICE_UID")" == "$before" ]] ||
	check_fail "a sync with nothing to do wrote"
ok "an edit through record sync reached vdirsyncer; a sync with nothing to do writes nothing"

# ---------------------------------------------------------------------------------------------
step="4 the protocol with curl"
status="$(curl -sS -o /dev/null -D "$W/headers" -w '%{http_code}' --cacert "$MICA_CA" "$CSURL/.well-known/carddav")"
want 301 "well-known"
grep -qi '^Location: /dav/' "$W/headers" || check_fail "well-known Location: $(cat "$W/headers")"
dav -u "alice:not-a-token" PROPFIND /dav/ ''
want 401 "PROPFIND with a bad password"
grep -qi '^WWW-Authenticate: Basic' "$W/headers" || check_fail "no Basic challenge: $(cat "$W/headers")"
dav PROPFIND "$BOOK/" '<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:nope/></d:prop></d:propfind>' 'Depth: 1'
want 207 "PROPFIND Depth 1"
[[ "$(grep -o '<d:response>' "$W/body" | wc -l)" == 4 ]] || check_fail "book + 3 cards: $(cat "$W/body")"
grep -q 'HTTP/1.1 404 Not Found' "$W/body" || check_fail "unknown property not 404: $(cat "$W/body")"
dav PROPFIND "$BOOK/" '<d:propfind xmlns:d="DAV:"><d:prop>' 'Depth: 0'
want 400 "malformed PROPFIND"
dav REPORT "$BOOK/" '<c:addressbook-query xmlns:c="urn:ietf:params:xml:ns:carddav"/>'
want 403 "addressbook-query"
dav REPORT "$BOOK/" "<c:addressbook-multiget xmlns:d=\"DAV:\" xmlns:c=\"urn:ietf:params:xml:ns:carddav\"><d:prop><d:getetag/><c:address-data/></d:prop><d:href>$BOOK/$U3.vcf</d:href><d:href>$BOOK/missing.vcf</d:href><d:href>/elsewhere/x&amp;y</d:href></c:addressbook-multiget>"
want 207 "multiget"
if ! { grep -q 'FN:Erin Entered' "$W/body" &&
	grep -q "$BOOK/missing.vcf</d:href><d:status>HTTP/1.1 404" "$W/body" &&
	grep -q "/elsewhere/x&amp;y</d:href><d:status>HTTP/1.1 404" "$W/body"; }; then
	check_fail "multiget: $(cat "$W/body")"
fi
dav PUT "$BOOK/x1.vcf" 'BEGIN:VCARD
FN:no version
END:VCARD' 'Content-Type: text/vcard'
want 415 "a vCard without VERSION"
big="$(head -c 40000 /dev/zero | tr '\0' a)"
dav PUT "$BOOK/big.vcf" "$(printf 'BEGIN:VCARD\r\nVERSION:3.0\r\nNOTE:%s\r\nNOTE:%s\r\nEND:VCARD\r\n' "$big" "$big")" \
	'Content-Type: text/vcard'
want 413 "a card over the record size"
[[ "$(jget error.code)" == record_too_large ]] || check_fail "oversize card: $(cat "$W/body")"
dav PROPFIND /dav/addressbooks/work/ '' 'Depth: 1'
want 404 "another address book"
dav GET "$BOOK/$U3.txt"
want 404 "a card path without .vcf"
dav PUT "$BOOK/$U3.vcf" "$(vcard "$U3" 'Stale')" 'Content-Type: text/vcard' 'If-Match: "9"'
want 412 "a stale If-Match"
dav PUT "$BOOK/$U3.vcf" "$(vcard "$U3" 'Twice')" 'Content-Type: text/vcard' 'If-None-Match: *'
want 412 "If-None-Match on an existing card"
dav PROPFIND "$BOOK/nobody.vcf" '' 'Depth: 0'
want 404 "PROPFIND on a card that does not exist"
dav GET "$BOOK/$U3.vcf"
want 200 "GET"
if ! { grep -q 'FN:Erin Entered' "$W/body" && grep -qi '^ETag: "1"' "$W/headers"; }; then
	check_fail "GET: $(cat "$W/headers" "$W/body")"
fi
dav -u "bob:$B1" PROPFIND "$BOOK/" '' 'Depth: 1'
want 207 "bob's book"
[[ "$(grep -o '<d:response>' "$W/body" | wc -l)" == 1 ]] || check_fail "bob sees cards: $(cat "$W/body")"
dav -u "bob:$B1" GET "$BOOK/$U3.vcf"
want 404 "bob reading alice's card"
ok "redirect, challenge, 207 with 404 propstats, 400/403/412/415, one user's book only"

stack_stop cloudsync
stack_stop account
stack_stop keycenter
stack_end
