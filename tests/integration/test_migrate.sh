#!/usr/bin/env bash
# test_migrate.sh - `mica migrate` against fresh databases of the tests/run PostgreSQL, on a copy
# of schema/: a fresh apply, a second run that applies nothing, pending and applied in --status,
# a failing migration that leaves nothing behind, an edited applied file stopping everything with
# exit code 2 and both checksums, usage errors (exit 64), and two concurrent runs applying each
# file exactly once. The databases are dropped at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

for v in MICA_PG_CONNINFO MICA_TEST_DIR MICA_BUILD; do
	if [[ -z "${!v:-}" ]]; then
		echo "test_migrate: $v is not set; run through tests/run" >&2
		exit 1
	fi
done
case "$MICA_PG_CONNINFO" in
postgres://* | postgresql://*)
	echo "test_migrate: MICA_PG_CONNINFO must be key=value, not a URI" >&2
	exit 1
	;;
esac

MICA="$MICA_BUILD/bin/mica"
[[ -x "$MICA" ]] || {
	echo "test_migrate: $MICA is missing (make all)" >&2
	exit 1
}
ADMIN="$MICA_PG_CONNINFO"
DB="mica_migrate_test_$$"
DB2="mica_migrate_race_$$"
CONN="$ADMIN dbname=$DB"
CONN2="$ADMIN dbname=$DB2"
WORK="$MICA_TEST_DIR/migrate.$$"
SCHEMA="$WORK/schema"

cleanup() {
	local db
	for db in "$DB" "$DB2"; do
		psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

step=""
fail() {
	echo "FAIL ($step): $*" >&2
	exit 1
}
pass() { echo "ok - $step"; }
sql() { psql "$1" -v ON_ERROR_STOP=1 -qAtc "$2"; }

# run_mica OUT ERR ARGS...: runs mica, stdout/stderr into files; sets rc.
rc=0
run_mica() {
	local out="$1" err="$2"
	shift 2
	rc=0
	"$MICA" "$@" >"$out" 2>"$err" || rc=$?
}

mkdir -p "$WORK"
cp -R schema "$SCHEMA"
sql "$ADMIN" "CREATE DATABASE $DB" >/dev/null
mapfile -t FILES < <(cd "$SCHEMA" && printf '%s\n' [0-9]*_*.sql | grep -E '^[0-9]+_.+\.sql$' | sort -n)
NFILES=${#FILES[@]}
((NFILES > 0)) || fail "no migrations in schema/"

# ----------------------------------------------------------------------------------------------
step="fresh database: every file applied, recorded with its SHA-256"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA"
((rc == 0)) || fail "exit $rc: $(cat "$WORK/err")"
[[ "$(grep -c '^applied ' "$WORK/out")" == "$NFILES" ]] || fail "output: $(cat "$WORK/out")"
[[ "$(sql "$CONN" "SELECT count(*) FROM public.mica_migration")" == "$NFILES" ]] || fail "count"
[[ "$(sql "$CONN" "SELECT to_regclass('outbox.event') IS NOT NULL")" == t ]] || fail "no outbox.event"
for f in "${FILES[@]}"; do
	want="$(sha256sum "$SCHEMA/$f" | cut -d' ' -f1)"
	got="$(sql "$CONN" "SELECT sha256 FROM public.mica_migration WHERE name = '$f'")"
	[[ "$got" == "$want" ]] || fail "$f recorded sha256 '$got', file has $want"
done
pass

step="second run applies nothing"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA"
((rc == 0)) || fail "exit $rc: $(cat "$WORK/err")"
grep -q '^nothing to apply' "$WORK/out" || fail "output: $(cat "$WORK/out")"
! grep -q '^applied ' "$WORK/out" || fail "applied something: $(cat "$WORK/out")"
[[ "$(sql "$CONN" "SELECT count(*) FROM public.mica_migration")" == "$NFILES" ]] || fail "count"
pass

step="MICA_DB_CONNINFO and MICA_SCHEMA_DIR stand in for the flags"
rc=0
MICA_DB_CONNINFO="$CONN" MICA_SCHEMA_DIR="$SCHEMA" "$MICA" migrate >"$WORK/out" 2>"$WORK/err" || rc=$?
((rc == 0)) || fail "exit $rc: $(cat "$WORK/err")"
grep -q '^nothing to apply' "$WORK/out" || fail "output: $(cat "$WORK/out")"
pass

step="--status shows a new file as pending, then applied"
cat >"$SCHEMA/9001_test_probe.sql" <<'EOF'
CREATE TABLE public.migrate_probe (x int);
INSERT INTO public.migrate_probe VALUES (1);
EOF
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA" --status
((rc == 0)) || fail "exit $rc: $(cat "$WORK/err")"
grep -Eq '^9001 +9001_test_probe\.sql +pending' "$WORK/out" || fail "status: $(cat "$WORK/out")"
grep -Eq "^[0-9]+ +${FILES[0]//./\\.} +applied +[0-9]{4}-" "$WORK/out" || fail "status: $(cat "$WORK/out")"
grep -q "^$NFILES applied, 1 pending" "$WORK/out" || fail "status: $(cat "$WORK/out")"
[[ "$(sql "$CONN" "SELECT to_regclass('public.migrate_probe') IS NULL")" == t ]] || fail "--status applied it"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA"
((rc == 0)) || fail "exit $rc: $(cat "$WORK/err")"
[[ "$(grep '^applied ' "$WORK/out" | cut -d' ' -f2)" == 9001_test_probe.sql ]] || fail "$(cat "$WORK/out")"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA" --status
grep -Eq '^9001 +9001_test_probe\.sql +applied' "$WORK/out" || fail "status: $(cat "$WORK/out")"
pass

step="a failing migration leaves nothing of itself"
cat >"$SCHEMA/9002_test_broken.sql" <<'EOF'
CREATE TABLE public.half_done (x int);
SELECT no_such_function();
EOF
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA"
((rc == 1)) || fail "exit $rc (want 1)"
grep -q '9002_test_broken.sql failed' "$WORK/err" || fail "stderr: $(cat "$WORK/err")"
grep -q 'no_such_function' "$WORK/err" || fail "stderr: $(cat "$WORK/err")"
[[ "$(sql "$CONN" "SELECT to_regclass('public.half_done') IS NULL")" == t ]] || fail "half applied"
[[ "$(sql "$CONN" "SELECT count(*) FROM public.mica_migration WHERE version = 9002")" == 0 ]] ||
	fail "recorded"
rm "$SCHEMA/9002_test_broken.sql"
pass

step="an edited applied file stops everything with both checksums and exit 2"
first="${FILES[0]}"
old_sha="$(sha256sum "$SCHEMA/$first" | cut -d' ' -f1)"
printf -- '-- an innocent-looking edit\n' >>"$SCHEMA/$first"
new_sha="$(sha256sum "$SCHEMA/$first" | cut -d' ' -f1)"
cat >"$SCHEMA/9003_test_after.sql" <<'EOF'
CREATE TABLE public.after_tamper (x int);
EOF
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA"
((rc == 2)) || fail "exit $rc (want 2): $(cat "$WORK/err")"
grep -q "checksum mismatch for $first" "$WORK/err" || fail "stderr: $(cat "$WORK/err")"
grep -q "applied sha256 $old_sha" "$WORK/err" || fail "stderr lacks the applied checksum"
grep -q "file sha256 $new_sha" "$WORK/err" || fail "stderr lacks the file checksum"
[[ "$(sql "$CONN" "SELECT to_regclass('public.after_tamper') IS NULL")" == t ]] ||
	fail "applied a later file despite the mismatch"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$SCHEMA" --status
((rc == 2)) || fail "--status exit $rc (want 2)"
grep -Eq "^[0-9]+ +${first//./\\.} +CHANGED" "$WORK/out" || fail "status: $(cat "$WORK/out")"
pass

step="usage errors exit 64"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --bogus
((rc == 64)) || fail "--bogus: exit $rc"
grep -q 'usage: mica migrate' "$WORK/err" || fail "no usage text"
rc=0
env -u MICA_DB_CONNINFO "$MICA" migrate --schema "$SCHEMA" >"$WORK/out" 2>"$WORK/err" || rc=$?
((rc == 64)) || fail "no --db: exit $rc"
grep -q 'MICA_DB_CONNINFO' "$WORK/err" || fail "stderr: $(cat "$WORK/err")"
run_mica "$WORK/out" "$WORK/err" no-such-command
((rc == 64)) || fail "unknown command: exit $rc"
run_mica "$WORK/out" "$WORK/err"
((rc == 64)) || fail "no command: exit $rc"
run_mica "$WORK/out" "$WORK/err" --help
{ ((rc == 0)) && grep -q migrate "$WORK/out"; } || fail "--help: exit $rc"
run_mica "$WORK/out" "$WORK/err" migrate --db "$CONN" --schema "$WORK/no-such-dir"
((rc == 1)) || fail "missing dir: exit $rc"
pass

step="two concurrent runs apply each file exactly once"
cp -R schema "$WORK/schema2"
sql "$ADMIN" "CREATE DATABASE $DB2" >/dev/null
rc_a=0 rc_b=0
"$MICA" migrate --db "$CONN2" --schema "$WORK/schema2" >"$WORK/a.out" 2>"$WORK/a.err" &
pid_a=$!
"$MICA" migrate --db "$CONN2" --schema "$WORK/schema2" >"$WORK/b.out" 2>"$WORK/b.err" &
pid_b=$!
wait "$pid_a" || rc_a=$?
wait "$pid_b" || rc_b=$?
((rc_a == 0 && rc_b == 0)) || fail "exits $rc_a $rc_b: $(cat "$WORK/a.err" "$WORK/b.err")"
[[ "$(cat "$WORK/a.out" "$WORK/b.out" | grep -c '^applied ')" == "$NFILES" ]] ||
	fail "outputs: $(cat "$WORK/a.out" "$WORK/b.out")"
[[ "$(sql "$CONN2" "SELECT count(*) FROM public.mica_migration")" == "$NFILES" ]] || fail "count"
pass

echo "test_migrate: all passed"
