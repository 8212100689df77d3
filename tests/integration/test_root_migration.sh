#!/usr/bin/env bash
# test_root_migration.sh - a Key Center token made before unwrap templates (issue 18), end to end
# with real tools on a private SoftHSM2 token:
#   1. a legacy root key (pkcs11-tool: RSA-4096 wrap/unwrap, no CKA_UNWRAP_TEMPLATE) and a KEK
#      blob wrapped by it in software (openssl, RSA-OAEP-SHA1), stored in keycenter.kek
#   2. mica-keycenter refuses to start on it and names `mica keycenter migrate-root`
#   3. `mica keycenter migrate-root` moves the KEK: the stored blob and keycenter.meta's root
#      public key change; a second run has nothing to do
#   4. the token's root key now refuses a PIN holder's unwrap as extractable (pkcs11-tool
#      cannot drive C_UnwrapKey with a template, so this is test_hsm's job; here the refusal
#      shows as mica-keycenter no longer complaining about the root key)
set -euo pipefail

# shellcheck source=tests/integration/lib-stack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-stack.sh"
stack_begin test_root_migration
KC="$BUILD/bin/mica-keycenter"

step="1 legacy token"
LABEL=mica-legacy
mica_hsm_up "$W" "$LABEL"
PIN_FILE="$W/secrets/hsm-user.pin"
p11() { pkcs11-tool --module "$MICA_HSM_MODULE" --token-label "$LABEL" --login --pin "$(<"$PIN_FILE")" "$@"; }
p11 --keypairgen --key-type rsa:4096 --label mica-root --id 0a --usage-wrap >"$W/p11.out" 2>&1 ||
	fail "pkcs11-tool keypairgen: $(cat "$W/p11.out")"
p11 --read-object --type pubkey --label mica-root -o "$W/root.der" >"$W/p11.out" 2>&1 ||
	fail "pkcs11-tool read pubkey: $(cat "$W/p11.out")"
openssl pkey -pubin -inform DER -in "$W/root.der" -out "$W/root-old.pem"
openssl rand 32 >"$W/kek.bin"
openssl pkeyutl -encrypt -pubin -inkey "$W/root-old.pem" -pkeyopt rsa_padding_mode:oaep \
	-pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 -in "$W/kek.bin" -out "$W/blob.bin"
[[ "$(stat -c %s "$W/blob.bin")" == 512 ]] || fail "blob is not 512 bytes"
stack_db_create
OLD_BLOB="$(od -An -v -tx1 "$W/blob.bin" | tr -d ' \n')"
sql "$ADMIN_CI" "INSERT INTO keycenter.kek (service, wrapped) VALUES ('account', '\\x$OLD_BLOB');
	INSERT INTO keycenter.meta (name, value) VALUES ('root_public_pem', '$(cat "$W/root-old.pem")')"
ok "legacy root key generated with pkcs11-tool; a KEK wrapped by it is stored"

step="2 refused"
mica_free_port PORT
rc=0
# shellcheck disable=SC2153 # PORT is set by mica_free_port (printf -v), not misspelt
env MICA_LOG_LEVEL=info MICA_KEYCENTER_HTTP_PORT="$PORT" MICA_KEYCENTER_HTTP_CERT_FILE="$MICA_CERT_SERVER" \
	MICA_KEYCENTER_HTTP_KEY_FILE="$MICA_KEY_SERVER" MICA_KEYCENTER_HTTP_CLIENT_CA_FILE="$MICA_CA" \
	MICA_KEYCENTER_DB_CONNINFO="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")" \
	MICA_KEYCENTER_DB_PASSWORD_FILE= MICA_KEYCENTER_HSM_MODULE="$MICA_HSM_MODULE" \
	MICA_KEYCENTER_HSM_TOKEN_LABEL="$LABEL" MICA_KEYCENTER_HSM_PIN_FILE="$PIN_FILE" \
	MICA_KEYCENTER_ALERTS_WEBHOOK_URL= \
	"$KC" --config deploy/mica.conf.example </dev/null >"$W/kc.log" 2>&1 || rc=$?
((rc != 0)) || fail "mica-keycenter started on a legacy root key"
{ grep -q 'lets a PIN holder unwrap KEKs in readable form' "$W/kc.log" &&
	grep -q 'mica keycenter migrate-root' "$W/kc.log"; } || fail "refusal not explained: $(cat "$W/kc.log")"
ok "mica-keycenter refuses the token (exit $rc) and names mica keycenter migrate-root"

step="3 migrate-root"
"$MICA" keycenter migrate-root --db "$ADMIN_CI" --token-label "$LABEL" --pin-file "$PIN_FILE" \
	>"$W/migrate.out" 2>&1 || fail "migrate-root: $(cat "$W/migrate.out")"
grep -q 'Moved 1 KEKs' "$W/migrate.out" || fail "migrate-root output: $(cat "$W/migrate.out")"
NEW_BLOB="$(sql "$ADMIN_CI" "SELECT encode(wrapped, 'hex') FROM keycenter.kek WHERE service = 'account'")"
[[ ${#NEW_BLOB} == 1024 && "$NEW_BLOB" != "$OLD_BLOB" ]] || fail "the stored blob did not change"
NEW_PEM="$(sql "$ADMIN_CI" "SELECT value FROM keycenter.meta WHERE name = 'root_public_pem'")"
[[ "$NEW_PEM" == *"BEGIN PUBLIC KEY"* && "$NEW_PEM" != "$(cat "$W/root-old.pem")" ]] ||
	fail "keycenter.meta still holds the old root public key"
grep -qF "$(sed -n 2p <<<"$NEW_PEM")" "$W/migrate.out" || fail "new root key not printed"
# Exactly one root pair is left on the token.
p11 --list-objects >"$W/objects.out" 2>&1 || fail "list objects: $(cat "$W/objects.out")"
n="$(grep -c 'label:[[:space:]]*mica-root' "$W/objects.out")"
((n == 2)) || fail "want one root pair (2 objects), got $n: $(cat "$W/objects.out")"
"$MICA" keycenter migrate-root --db "$ADMIN_CI" --token-label "$LABEL" --pin-file "$PIN_FILE" \
	>"$W/migrate.out" 2>&1 || fail "second migrate-root: $(cat "$W/migrate.out")"
grep -q 'nothing to do' "$W/migrate.out" || fail "second run: $(cat "$W/migrate.out")"
[[ "$(sql "$ADMIN_CI" "SELECT encode(wrapped, 'hex') FROM keycenter.kek")" == "$NEW_BLOB" ]] ||
	fail "the second run changed the blob"
ok "KEK moved to a new root key; meta updated; a second run does nothing"

step="4 accepted"
rc=0
env MICA_LOG_LEVEL=info MICA_KEYCENTER_HTTP_PORT="$PORT" MICA_KEYCENTER_HTTP_CERT_FILE="$MICA_CERT_SERVER" \
	MICA_KEYCENTER_HTTP_KEY_FILE="$MICA_KEY_SERVER" MICA_KEYCENTER_HTTP_CLIENT_CA_FILE="$MICA_CA" \
	MICA_KEYCENTER_DB_CONNINFO="$(mica_keycenter_conninfo "$MICA_TEST_DIR" "$DB")" \
	MICA_KEYCENTER_DB_PASSWORD_FILE= MICA_KEYCENTER_HSM_MODULE="$MICA_HSM_MODULE" \
	MICA_KEYCENTER_HSM_TOKEN_LABEL="$LABEL" MICA_KEYCENTER_HSM_PIN_FILE="$PIN_FILE" \
	MICA_KEYCENTER_ALERTS_WEBHOOK_URL= \
	"$KC" --config deploy/mica.conf.example </dev/null >"$W/kc.log" 2>&1 || rc=$?
# This token has no audit key or sealed MAC key (it was never through `init`): the daemon now
# gets past the root key check and stops at the audit key instead.
{ ((rc != 0)) && ! grep -q 'readable form' "$W/kc.log" && grep -q 'cannot unseal the audit key' "$W/kc.log"; } ||
	fail "after migration: $(cat "$W/kc.log")"
ok "the migrated root key passes mica-keycenter's template check"
