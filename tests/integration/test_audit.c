/* test_audit.c - keycenter/audit against the real PostgreSQL of tests/run: group
 * commit from many threads, the append-only role, fail-closed appends while
 * the database is gone or refuses the insert, restart, and the offline
 * verifier naming the right kind and seq for each tampering. Every test runs
 * in its own database cloned from a template migrated by `mica migrate`.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "crypto.h"
#include "db.h"
#include "err.h"
#include "keycenter/audit.h"
#include "log.h"
#include "tests/check_main.h"

static const char *admin;     /* MICA_PG_CONNINFO (database mica) */
static char tmpl[64];	      /* migrated template database */
static char workdir[512];     /* under MICA_TEST_DIR */
static char pubkey_path[600]; /* checkpoint public key, PEM */
static EVP_PKEY *sign_key;    /* checkpoint key pair, made once in main() */
static int main_pid;

/* Per test (Check forks one process per test). */
static char dbname[64];
static char conninfo[2048];  /* superuser on dbname */
static char writer_ci[2300]; /* the writer: role mica_keycenter */

static const uint8_t mac_key[32] = {
	0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa,
	0xab, 0xac, 0xad, 0xae, 0xaf, 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5,
	0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
};

/* ---- helpers -------------------------------------------------------------- */

static mica_db *open_ci(const char *ci)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, ci);
	ck_assert_msg(rc == 0, "mica_db_open: %s: %s", mica_strerror(rc), mica_db_errmsg(NULL));
	return db;
}

static void exec_ok(mica_db *db, const char *sql, int n, const char *const *p)
{
	int rc = mica_db_exec(db, sql, n, p, NULL);
	ck_assert_msg(rc == 0, "%s: %s (%s)", sql, mica_strerror(rc), mica_db_errmsg(db));
}

static int64_t query_int(mica_db *db, const char *sql, int n, const char *const *p)
{
	PGresult *res = NULL;
	int rc = mica_db_exec(db, sql, n, p, &res);
	ck_assert_msg(rc == 0, "%s: %s (%s)", sql, mica_strerror(rc), mica_db_errmsg(db));
	int64_t v = 0;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &v), 0);
	PQclear(res);
	return v;
}

/* Runs one statement as the superuser on the test database. */
static void sql_as_admin(const char *sql)
{
	mica_db *db = open_ci(conninfo);
	exec_ok(db, sql, 0, NULL);
	mica_db_close(&db);
}

/* A fresh database cloned from the migrated template. Database names cannot
 * be parameters; these come from our pids. */
static void fresh_db(void)
{
	char sql[256];
	snprintf(dbname, sizeof(dbname), "mica_audit_%d_%d", main_pid, (int)getpid());
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s TEMPLATE %s", dbname, tmpl);
	mica_db *db = open_ci(admin);
	exec_ok(db, sql, 0, NULL);
	mica_db_close(&db);
	snprintf(conninfo, sizeof(conninfo), "%s dbname=%s", admin, dbname);
	snprintf(writer_ci, sizeof(writer_ci),
		 "%s application_name=mica_audit_writer options='-c role=mica_keycenter'",
		 conninfo);
}

static void drop_db(void)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
	mica_db *db = open_ci(admin);
	exec_ok(db, sql, 0, NULL);
	mica_db_close(&db);
}

/* The test signer: ECDSA P-256 over the digest, DER, as kc_hsm_sign(). */
struct signer {
	atomic_int fail;
};

static int test_sign(const uint8_t digest[32], uint8_t **sig, size_t *sig_len, void *arg)
{
	struct signer *s = arg;
	*sig = NULL;
	*sig_len = 0;
	if (s && atomic_load(&s->fail))
		return MICA_EHSM;
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(sign_key, NULL);
	size_t n = 0;
	int ok = ctx && EVP_PKEY_sign_init(ctx) == 1 &&
		 EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
		 EVP_PKEY_sign(ctx, NULL, &n, digest, 32) == 1 && (*sig = malloc(n)) != NULL &&
		 EVP_PKEY_sign(ctx, *sig, &n, digest, 32) == 1;
	EVP_PKEY_CTX_free(ctx);
	if (!ok) {
		free(*sig);
		*sig = NULL;
		return MICA_ECRYPTO;
	}
	*sig_len = n;
	return 0;
}

static kc_audit *start(int every_n, int every_ms, struct signer *s)
{
	kc_audit_options o = {.checkpoint_every_n = every_n, .checkpoint_every_ms = every_ms};
	kc_audit *a = NULL;
	int rc = kc_audit_start(&a, writer_ci, mac_key, test_sign, s, &o);
	ck_assert_msg(rc == 0, "kc_audit_start: %s", mica_strerror(rc));
	return a;
}

/* Record number |i| of a test: varied fields, NULLs, and text that needs
 * escaping in array literals and JSON. */
struct rec_buf {
	char principal[64], client[32], ctx[65];
	kc_audit_record r;
};

static const kc_audit_record *make_rec(struct rec_buf *b, int i)
{
	if (i % 11 == 5)
		snprintf(b->principal, sizeof(b->principal), "svc \"q\\uo,te\" {x} \xc3\xbc %d", i);
	else
		snprintf(b->principal, sizeof(b->principal), "svc-%d", i % 7);
	snprintf(b->client, sizeof(b->client), "10.0.%d.%d", (i / 256) % 256, i % 256);
	snprintf(b->ctx, sizeof(b->ctx), "%064x", i);
	b->r = (kc_audit_record){
		.principal = b->principal,
		.client = b->client,
		.op = i % 4 ? "datakey" : "decrypt",
		.key_name = i % 3 ? "user-data" : NULL,
		.key_version = i % 3 ? 1 + i % 5 : 0,
		.context_hash = i % 2 ? b->ctx : NULL,
		.result = i % 7 ? "ok" : "denied",
	};
	return &b->r;
}

static void append_n(kc_audit *a, int first, int n, uint64_t want_first_seq)
{
	for (int i = 0; i < n; i++) {
		struct rec_buf b;
		uint64_t seq = 0;
		int rc = kc_audit_append(a, make_rec(&b, first + i), &seq);
		ck_assert_msg(rc == 0, "append %d: %s", first + i, mica_strerror(rc));
		if (want_first_seq) /* 0: any seq */
			ck_assert_uint_eq(seq, want_first_seq + (uint64_t)i);
	}
}

static void path_in_work(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%d-%s", workdir, (int)getpid(), name);
}

static void export_to(const char *path)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	mica_db *db = open_ci(conninfo);
	int rc = kc_audit_export(db, f);
	ck_assert_msg(rc == 0, "export: %s (%s)", mica_strerror(rc), mica_db_errmsg(db));
	mica_db_close(&db);
	ck_assert_int_eq(fclose(f), 0);
}

static int verify_path(const char *path, kc_audit_report *rep)
{
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	int rc = kc_audit_verify(f, pubkey_path, rep);
	fclose(f);
	return rc;
}

/* Exports the test database and verifies it; returns the report's kind. */
static kc_audit_report export_and_verify(void)
{
	char path[700];
	kc_audit_report rep;
	path_in_work(path, sizeof(path), "export.jsonl");
	export_to(path);
	int rc = verify_path(path, &rep);
	ck_assert_int_eq(rc, rep.kind == KC_AUDIT_OK ? 0 : MICA_EAUTH);
	return rep;
}

static void assert_verdict(const kc_audit_report *rep, kc_audit_verdict kind, uint64_t seq)
{
	ck_assert_msg(rep->kind == kind && rep->bad_seq == seq,
		      "expected %s at seq %" PRIu64 ", got %s at seq %" PRIu64 " (%s)",
		      kc_audit_verdict_name(kind), seq, kc_audit_verdict_name(rep->kind),
		      rep->bad_seq, rep->detail);
}

static void assert_chain_ok(uint64_t records, uint64_t last_checkpoint)
{
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	ck_assert_uint_eq(rep.records, records);
	ck_assert_uint_eq(rep.last_checkpoint_seq, last_checkpoint);
	mica_db *db = open_ci(conninfo);
	uint64_t bad = 99;
	ck_assert_int_eq(kc_audit_verify_macs(db, mac_key, &bad, NULL), 0);
	ck_assert_uint_eq(bad, 0);
	mica_db_close(&db);
}

/* ---- group commit --------------------------------------------------------- */

#define THREADS 8
#define PER_THREAD 250

struct worker {
	kc_audit *a;
	uint64_t seqs[PER_THREAD];
	int id;
	int errors;
};

static void *append_worker(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < PER_THREAD; i++) {
		struct rec_buf b;
		if (kc_audit_append(w->a, make_rec(&b, w->id * PER_THREAD + i), &w->seqs[i]) != 0)
			w->errors++;
	}
	return NULL;
}

/* Checks that the export's checkpoint signature is also a plain
 * ECDSA-with-SHA-256 signature of the 64-byte preimage (audit.h's claim). */
static void checkpoint_verifies_with_digestverify(mica_db *db)
{
	PGresult *res = NULL;
	ck_assert_int_eq(mica_db_exec(db,
				      "SELECT seq, ts_us, encode(head_hash, 'hex'),"
				      " encode(signature, 'hex') FROM keycenter.audit_checkpoint"
				      " ORDER BY seq LIMIT 1",
				      0, NULL, &res),
			 0);
	int64_t seq = 0, ts = 0;
	uint8_t head[32], sig[128], pre[24 + 8 + 8 + 32];
	size_t n = 0, sig_len = 0;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &seq), 0);
	ck_assert_int_eq(mica_db_get_int64(res, 0, 1, &ts), 0);
	ck_assert_int_eq(mica_hex_decode(mica_db_get(res, 0, 2), 64, head, 32, &n), 0);
	const char *sh = mica_db_get(res, 0, 3);
	ck_assert_int_eq(mica_hex_decode(sh, strlen(sh), sig, sizeof(sig), &sig_len), 0);
	PQclear(res);
	memcpy(pre, "mica-audit-checkpoint-v1", 24);
	for (int i = 0; i < 8; i++) {
		pre[24 + i] = (uint8_t)((uint64_t)seq >> (56 - 8 * i));
		pre[32 + i] = (uint8_t)((uint64_t)ts >> (56 - 8 * i));
	}
	memcpy(pre + 40, head, 32);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	ck_assert_int_eq(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, sign_key), 1);
	ck_assert_int_eq(EVP_DigestVerify(md, sig, sig_len, pre, sizeof(pre)), 1);
	EVP_MD_CTX_free(md);
}

START_TEST(group_commit_from_many_threads)
{
	fresh_db();
	kc_audit *a = start(100, 60000, NULL);
	pthread_t t[THREADS];
	static struct worker w[THREADS];
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.a = a, .id = i};
		ck_assert_int_eq(pthread_create(&t[i], NULL, append_worker, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	kc_audit_stats st;
	kc_audit_stats_get(a, &st);
	kc_audit_stop(a);

	/* Every append succeeded and got its own seq: exactly 1..2000. */
	static unsigned char seen[THREADS * PER_THREAD + 1];
	for (int i = 0; i < THREADS; i++) {
		ck_assert_int_eq(w[i].errors, 0);
		for (int j = 0; j < PER_THREAD; j++) {
			uint64_t s = w[i].seqs[j];
			ck_assert(s >= 1 && s <= THREADS * PER_THREAD && !seen[s]);
			seen[s] = 1;
			/* One thread's appends are ordered. */
			ck_assert(j == 0 || s > w[i].seqs[j - 1]);
		}
	}
	ck_assert_uint_eq(st.records, THREADS * PER_THREAD);
	fprintf(stderr,
		"test_audit: %d appends from %d threads: %" PRIu64 " batches, mean %.2f,"
		" max %" PRIu64 " records per batch, %" PRIu64 " checkpoints\n",
		THREADS * PER_THREAD, THREADS, st.batches, (double)st.records / (double)st.batches,
		st.max_batch, st.checkpoints);
	/* Group commit happened: fewer transactions than records, and some held
	 * several. How many records share one depends on how the threads are
	 * scheduled (a loaded host commits smaller batches), so no ratio is
	 * asserted; without group commit both checks fail. */
	ck_assert_msg(st.batches < st.records, "%" PRIu64 " batches for %" PRIu64 " records",
		      st.batches, st.records);
	ck_assert_uint_ge(st.max_batch, 4);
	ck_assert_uint_eq(st.failed_batches, 0);

	mica_db *db = open_ci(conninfo);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM keycenter.audit", 0, NULL), 2000);
	ck_assert_int_eq(query_int(db, "SELECT max(seq) FROM keycenter.audit", 0, NULL), 2000);
	/* Every 100 records at least, plus one at stop for the tail if any. */
	ck_assert_int_ge(query_int(db, "SELECT count(*) FROM keycenter.audit_checkpoint", 0, NULL),
			 20);
	ck_assert_int_eq(query_int(db, "SELECT max(seq) FROM keycenter.audit_checkpoint", 0, NULL),
			 2000);
	checkpoint_verifies_with_digestverify(db);
	mica_db_close(&db);
	assert_chain_ok(2000, 2000);
	drop_db();
}
END_TEST

/* ---- the role --------------------------------------------------------------- */

/* Runs |sql| as mica_keycenter inside a transaction that is rolled back. */
static int as_keycenter(mica_db *db, const char *sql)
{
	exec_ok(db, "BEGIN", 0, NULL);
	exec_ok(db, "SET LOCAL ROLE mica_keycenter", 0, NULL);
	int rc = mica_db_exec(db, sql, 0, NULL, NULL);
	if (rc)
		ck_assert_str_eq(mica_db_sqlstate(db), "42501");
	exec_ok(db, "ROLLBACK", 0, NULL);
	return rc;
}

START_TEST(role_can_only_insert_and_select)
{
	fresh_db();
	kc_audit *a = start(2, 60000, NULL);
	append_n(a, 0, 3, 1);
	kc_audit_stop(a);
	mica_db *db = open_ci(conninfo);
	static const char *const denied[] = {
		"UPDATE keycenter.audit SET result = 'ok' WHERE seq = 1",
		"DELETE FROM keycenter.audit WHERE seq = 3",
		"TRUNCATE keycenter.audit",
		"UPDATE keycenter.audit_checkpoint SET ts_us = 0",
		"DELETE FROM keycenter.audit_checkpoint",
		"TRUNCATE keycenter.audit_checkpoint",
	};
	for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++)
		ck_assert_msg(as_keycenter(db, denied[i]) == MICA_EPERM, "allowed: %s", denied[i]);
	ck_assert_int_eq(as_keycenter(db, "SELECT count(*) FROM keycenter.audit"), 0);
	ck_assert_int_eq(as_keycenter(db, "SELECT count(*) FROM keycenter.audit_checkpoint"), 0);
	ck_assert_int_eq(as_keycenter(db, "INSERT INTO keycenter.audit_checkpoint VALUES"
					  " (99, 0, decode(repeat('00', 32), 'hex'), '\\x01')"),
			 0);
	/* Nothing changed. */
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM keycenter.audit", 0, NULL), 3);
	mica_db_close(&db);
	assert_chain_ok(3, 3);
	drop_db();
}
END_TEST

/* ---- fail closed ---------------------------------------------------------- */

static void set_connections(int allow)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "ALTER DATABASE %s ALLOW_CONNECTIONS %s", dbname,
		 allow ? "true" : "false");
	mica_db *db = open_ci(admin);
	exec_ok(db, sql, 0, NULL);
	mica_db_close(&db);
}

/* Terminates the writer's backend and waits until it is gone. The pid is
 * looked up first: in one statement the planner may call
 * pg_terminate_backend() before the other conditions filter the rows. */
static void kill_writer_connection(void)
{
	const char *p[1] = {dbname};
	mica_db *db = open_ci(admin);
	int64_t pid = query_int(db,
				"SELECT pid FROM pg_stat_activity WHERE datname = $1"
				" AND application_name = 'mica_audit_writer'",
				1, p);
	char pid_s[24];
	snprintf(pid_s, sizeof(pid_s), "%" PRId64, pid);
	const char *q[1] = {pid_s};
	PGresult *res = NULL;
	ck_assert_int_eq(
		mica_db_exec(db, "SELECT pg_terminate_backend($1::int, 10000)", 1, q, &res), 0);
	ck_assert_str_eq(mica_db_get(res, 0, 0), "t");
	PQclear(res);
	mica_db_close(&db);
}

/* Terminates the writer's backend if it has one right now (it may be
 * between connections). */
static void kill_writer_if_connected(void)
{
	const char *p[1] = {dbname};
	PGresult *res = NULL;
	mica_db *db = open_ci(admin);
	ck_assert_int_eq(mica_db_exec(db,
				      "SELECT pid FROM pg_stat_activity WHERE datname = $1"
				      " AND application_name = 'mica_audit_writer'",
				      1, p, &res),
			 0);
	for (int i = 0; i < PQntuples(res); i++) {
		const char *q[1] = {mica_db_get(res, i, 0)};
		exec_ok(db, "SELECT pg_terminate_backend($1::int, 10000)", 1, q);
	}
	PQclear(res);
	mica_db_close(&db);
}

#define HAMMER_MAX 200

/* Appending threads; each keeps the seq of every append that succeeded. */
struct hammer {
	kc_audit *a;
	pthread_t thread;
	uint64_t seqs[HAMMER_MAX];
	int id, n;
	int ok, failed, other;
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	for (int i = 0; i < h->n; i++) {
		struct rec_buf b;
		uint64_t seq = 0;
		int rc = kc_audit_append(h->a, make_rec(&b, h->id * 1000 + i), &seq);
		if (rc == 0 && seq > 0)
			h->seqs[h->ok++] = seq;
		else if (rc == MICA_EAUDIT && seq == 0)
			h->failed++;
		else
			h->other++;
	}
	return NULL;
}

static void hammer_start(struct hammer *h, int nthreads, kc_audit *a, int n)
{
	ck_assert_int_le(n, HAMMER_MAX);
	for (int i = 0; i < nthreads; i++) {
		h[i] = (struct hammer){.a = a, .id = i, .n = n};
		ck_assert_int_eq(pthread_create(&h[i].thread, NULL, hammer_main, &h[i]), 0);
	}
}

/* Joins the threads; checks that every append either committed with a seq
 * no other append got or failed with MICA_EAUDIT. Returns the successes;
 * *failed gets the failures. */
static int hammer_join(struct hammer *h, int nthreads, int *failed)
{
	static unsigned char seen[8 * HAMMER_MAX + 64];
	int ok = 0;
	*failed = 0;
	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < nthreads; i++) {
		pthread_join(h[i].thread, NULL);
		ck_assert_int_eq(h[i].other, 0);
		for (int j = 0; j < h[i].ok; j++) {
			uint64_t s = h[i].seqs[j];
			ck_assert(s < sizeof(seen) && !seen[s]);
			seen[s] = 1;
		}
		ok += h[i].ok;
		*failed += h[i].failed;
	}
	return ok;
}

static int hammer(kc_audit *a, int nthreads, int n, int *failed)
{
	struct hammer h[8];
	hammer_start(h, nthreads, a, n);
	return hammer_join(h, nthreads, failed);
}

START_TEST(fail_closed_when_database_is_gone)
{
	fresh_db();
	kc_audit *a = start(1000, 60000, NULL);
	append_n(a, 0, 10, 1);

	set_connections(0);
	kill_writer_connection();
	struct rec_buf b;
	uint64_t seq = 77;
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 10), &seq), MICA_EAUDIT);
	ck_assert_uint_eq(seq, 0);
	int failed = 0;
	ck_assert_int_eq(hammer(a, 4, 5, &failed), 0);
	ck_assert_int_eq(failed, 20);
	kc_audit_stats st;
	kc_audit_stats_get(a, &st);
	ck_assert_uint_ge(st.failed_batches, 2);
	ck_assert_uint_eq(st.records, 10);

	/* Back: the next batch reconnects, resynchronises, and the chain goes
	 * on at seq 11 without a gap. */
	set_connections(1);
	append_n(a, 11, 5, 11);

	/* The writer's connection killed again and again while four threads
	 * append. A COMMIT cut off in flight has an unknown outcome: its
	 * callers got MICA_EAUDIT although the rows may exist. Either way the
	 * writer resynchronises, so every success is stored and the chain
	 * stays gap-free and valid. */
	struct hammer h[4];
	hammer_start(h, 4, a, 150);
	for (int i = 0; i < 8; i++) {
		usleep(10 * 1000);
		kill_writer_if_connected();
	}
	int ok = 15 + hammer_join(h, 4, &failed);
	append_n(a, 900, 1, 0);
	ok++;
	kc_audit_stop(a);
	mica_db *db = open_ci(conninfo);
	int64_t rows = query_int(db, "SELECT count(*) FROM keycenter.audit", 0, NULL);
	mica_db_close(&db);
	fprintf(stderr,
		"test_audit: appends while the connection was killed: %d committed, %d refused,"
		" %" PRId64 " rows\n",
		ok - 16, failed, rows);
	ck_assert_int_ge(rows, ok);
	ck_assert_int_le(rows, ok + failed);
	assert_chain_ok((uint64_t)rows, (uint64_t)rows);
	drop_db();
}
END_TEST

START_TEST(fail_closed_when_insert_is_refused)
{
	fresh_db();
	kc_audit *a = start(7, 60000, NULL);
	append_n(a, 0, 5, 1);
	sql_as_admin("REVOKE INSERT ON keycenter.audit FROM mica_keycenter");
	struct rec_buf b;
	uint64_t seq = 77;
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 5), &seq), MICA_EAUDIT);
	ck_assert_uint_eq(seq, 0);
	sql_as_admin("GRANT INSERT ON keycenter.audit TO mica_keycenter");
	append_n(a, 6, 1, 6); /* no gap where the failed record was */

	/* Flip the grant while four threads append: each append either
	 * committed with its own seq or failed and left nothing behind. */
	struct hammer h[4];
	hammer_start(h, 4, a, 150);
	for (int i = 0; i < 5; i++) {
		usleep(15 * 1000);
		sql_as_admin("REVOKE INSERT ON keycenter.audit FROM mica_keycenter");
		usleep(15 * 1000);
		sql_as_admin("GRANT INSERT ON keycenter.audit TO mica_keycenter");
	}
	int failed = 0;
	int ok = 6 + hammer_join(h, 4, &failed);
	fprintf(stderr, "test_audit: appends while the grant flipped: %d committed, %d refused\n",
		ok - 6, failed);
	ck_assert_int_eq(ok - 6 + failed, 600);
	append_n(a, 500, 3, (uint64_t)ok + 1);
	ok += 3;
	kc_audit_stop(a);

	mica_db *db = open_ci(conninfo);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM keycenter.audit", 0, NULL), ok);
	ck_assert_int_eq(query_int(db, "SELECT max(seq) FROM keycenter.audit", 0, NULL), ok);
	mica_db_close(&db);
	assert_chain_ok((uint64_t)ok, (uint64_t)ok);
	drop_db();
}
END_TEST

START_TEST(fail_closed_when_signing_fails)
{
	fresh_db();
	struct signer s;
	atomic_init(&s.fail, 0);
	kc_audit *a = start(5, 60000, &s);
	append_n(a, 0, 4, 1);
	/* The fifth record makes a checkpoint due; without a signature the
	 * batch does not commit. */
	atomic_store(&s.fail, 1);
	struct rec_buf b;
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 4), NULL), MICA_EAUDIT);
	atomic_store(&s.fail, 0);
	append_n(a, 4, 6, 5);
	kc_audit_stop(a);
	mica_db *db = open_ci(conninfo);
	ck_assert_int_eq(query_int(db, "SELECT min(seq) FROM keycenter.audit_checkpoint", 0, NULL),
			 5);
	mica_db_close(&db);
	assert_chain_ok(10, 10);
	drop_db();
}
END_TEST

START_TEST(bad_records_are_refused)
{
	fresh_db();
	kc_audit *a = start(0, 0, NULL);
	struct rec_buf b;
	kc_audit_record r = *make_rec(&b, 1);
	char big[KC_AUDIT_FIELD_MAX + 2];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	r.principal = NULL;
	ck_assert_int_eq(kc_audit_append(a, &r, NULL), MICA_EINVAL);
	r.principal = "\xc3\x28"; /* invalid UTF-8 */
	ck_assert_int_eq(kc_audit_append(a, &r, NULL), MICA_EINVAL);
	r.principal = "\xed\xa0\x80"; /* a surrogate */
	ck_assert_int_eq(kc_audit_append(a, &r, NULL), MICA_EINVAL);
	r.principal = "ok";
	r.key_name = big;
	ck_assert_int_eq(kc_audit_append(a, &r, NULL), MICA_EINVAL);
	ck_assert_int_eq(kc_audit_append(a, NULL, NULL), MICA_EINVAL);
	/* Nothing was queued: the next record is seq 1. */
	append_n(a, 0, 1, 1);
	kc_audit_stop(a);
	kc_audit_stop(NULL);
	assert_chain_ok(1, 1);
	drop_db();
}
END_TEST

/* ---- restart ---------------------------------------------------------------- */

static int try_start(const uint8_t key[32])
{
	kc_audit *a = NULL;
	int rc = kc_audit_start(&a, writer_ci, key, test_sign, NULL, NULL);
	if (rc == 0)
		kc_audit_stop(a);
	else
		ck_assert_ptr_null(a);
	return rc;
}

START_TEST(restart_continues_the_chain)
{
	fresh_db();
	kc_audit *a = start(10, 60000, NULL);
	append_n(a, 0, 25, 1);
	kc_audit_stop(a); /* final checkpoint at 25 */
	a = start(10, 60000, NULL);
	append_n(a, 25, 5, 26);
	kc_audit_stats st;
	kc_audit_stats_get(a, &st);
	ck_assert_uint_eq(st.records, 5);
	kc_audit_stop(a);
	assert_chain_ok(30, 30);

	/* A writer refuses to extend a log whose head does not verify. */
	uint8_t wrong[32];
	memcpy(wrong, mac_key, 32);
	wrong[31] ^= 1;
	ck_assert_int_eq(try_start(wrong), MICA_EAUDIT);
	ck_assert_int_eq(try_start(mac_key), 0);
	sql_as_admin("UPDATE keycenter.audit SET result = 'denied' WHERE seq = 30");
	ck_assert_int_eq(try_start(mac_key), MICA_EAUDIT);
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq >= 29");
	ck_assert_int_eq(try_start(mac_key), MICA_EAUDIT); /* checkpoint at 30 > 28 */
	drop_db();
}
END_TEST

START_TEST(timer_checkpoints_the_tail)
{
	fresh_db();
	kc_audit *a = start(1000, 100, NULL);
	append_n(a, 0, 3, 1);
	/* No record arrives; the T timer signs the head on its own. */
	mica_db *db = open_ci(conninfo);
	int64_t n = 0;
	for (int i = 0; i < 200 && n == 0; i++) {
		usleep(50 * 1000);
		n = query_int(db, "SELECT count(*) FROM keycenter.audit_checkpoint WHERE seq = 3",
			      0, NULL);
	}
	ck_assert_int_eq(n, 1);
	kc_audit_stats st;
	kc_audit_stats_get(a, &st);
	kc_audit_stop(a); /* nothing new since: no further checkpoint */
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM keycenter.audit_checkpoint", 0, NULL),
			 (int64_t)st.checkpoints);
	mica_db_close(&db);
	assert_chain_ok(3, 3);
	drop_db();
}
END_TEST

/* ---- tampering ----------------------------------------------------------------- */

/* 50 records, checkpoints at 10, 20, 30, 40, 50. */
static void make_log50(void)
{
	fresh_db();
	kc_audit *a = start(10, 60000, NULL);
	append_n(a, 0, 50, 1);
	kc_audit_stop(a);
	assert_chain_ok(50, 50);
}

static uint64_t macs_bad(int want_rc)
{
	mica_db *db = open_ci(conninfo);
	uint64_t bad = 0;
	ck_assert_int_eq(kc_audit_verify_macs(db, mac_key, &bad, NULL), want_rc);
	mica_db_close(&db);
	return bad;
}

START_TEST(tamper_flipped_byte)
{
	make_log50();
	sql_as_admin("UPDATE keycenter.audit SET principal = convert_from(set_byte(convert_to("
		     "principal, 'UTF8'), 0, get_byte(convert_to(principal, 'UTF8'), 0) # 1),"
		     " 'UTF8') WHERE seq = 17");
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_BAD_HASH, 17);
	ck_assert_uint_eq(rep.records, 16);
	ck_assert_uint_eq(macs_bad(MICA_ECHECKSUM), 17);
	drop_db();
}
END_TEST

START_TEST(tamper_deleted_row)
{
	make_log50();
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq = 23");
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_SEQ_GAP, 23);
	/* A deleted checkpointed record: the checkpoint line comes first. */
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq = 20");
	rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_SEQ_GAP, 20);
	drop_db();
}
END_TEST

/* Swaps lines |x| and |y| (1-based) of |path|. */
static void swap_lines(const char *path, int x, int y)
{
	static char lines[200][4096];
	int n = 0;
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	while (n < 200 && fgets(lines[n], sizeof(lines[n]), f))
		n++;
	fclose(f);
	ck_assert_int_ge(n, x > y ? x : y);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 1; i <= n; i++)
		fputs(lines[(i == x ? y : i == y ? x : i) - 1], f);
	ck_assert_int_eq(fclose(f), 0);
}

/* Line number of record |seq| in an export of make_log50(): records and
 * checkpoints interleave, a checkpoint after every tenth record. */
static int line_of_record(int seq)
{
	return seq + (seq - 1) / 10;
}

START_TEST(tamper_reordered_rows)
{
	make_log50();
	/* Two records swapped in the export file: the order check names the
	 * smaller seq. */
	char path[700];
	kc_audit_report rep;
	path_in_work(path, sizeof(path), "reordered.jsonl");
	export_to(path);
	swap_lines(path, line_of_record(30), line_of_record(35));
	ck_assert_int_eq(verify_path(path, &rep), MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_OUT_OF_ORDER, 30);
	export_to(path);
	swap_lines(path, line_of_record(12), line_of_record(13));
	ck_assert_int_eq(verify_path(path, &rep), MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_OUT_OF_ORDER, 12);

	/* Swapped in the database (their seq values exchanged): seq is part of
	 * the hashed content, so the first one no longer gives its hash. */
	sql_as_admin("UPDATE keycenter.audit SET seq = 1000000 WHERE seq = 30");
	sql_as_admin("UPDATE keycenter.audit SET seq = 30 WHERE seq = 35");
	sql_as_admin("UPDATE keycenter.audit SET seq = 35 WHERE seq = 1000000");
	rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_BAD_HASH, 30);
	drop_db();
}
END_TEST

START_TEST(tamper_truncated_tail)
{
	make_log50();
	/* The checkpoint at 50 survives the records after 42. */
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq > 42");
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_TRUNCATED, 43);
	ck_assert_uint_eq(rep.records, 42);
	ck_assert_uint_eq(rep.last_checkpoint_seq, 40);
	/* Without the checkpoint the cut is invisible offline: the records up
	 * to 42 still verify (a tail after the last checkpoint is unsigned). */
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq = 50");
	rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	ck_assert_uint_eq(rep.unsigned_tail, 2);
	drop_db();
}
END_TEST

START_TEST(tamper_checkpoint)
{
	make_log50();
	/* One byte inside r of the DER signature. */
	sql_as_admin("UPDATE keycenter.audit_checkpoint"
		     " SET signature = set_byte(signature, 10, get_byte(signature, 10) # 1)"
		     " WHERE seq = 20");
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_BAD_CHECKPOINT_SIGNATURE, 20);
	ck_assert_uint_eq(rep.checkpoints, 1);
	/* A checkpoint naming another head. */
	sql_as_admin("UPDATE keycenter.audit_checkpoint SET head_hash ="
		     " (SELECT hash FROM keycenter.audit WHERE seq = 39) WHERE seq = 40");
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq = 20");
	rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_CHECKPOINT_MISMATCH, 40);
	drop_db();
}
END_TEST

/* Rewrites record |seq| with a new principal and a hash recomputed over it,
 * as someone without the MAC key would. */
static void rewrite_record(int seq)
{
	mica_db *db = open_ci(conninfo);
	char s[16];
	snprintf(s, sizeof(s), "%d", seq);
	const char *p[1] = {s};
	PGresult *res = NULL;
	ck_assert_int_eq(
		mica_db_exec(db,
			     "SELECT ts_us, client, op, key_name, key_version, context_hash,"
			     " result, encode(prev_hash, 'hex') FROM keycenter.audit"
			     " WHERE seq = $1::bigint",
			     1, p, &res),
		0);
	int64_t ts = 0, kv = 0;
	uint8_t prev[32], hash[32];
	size_t n = 0;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &ts), 0);
	if (mica_db_get(res, 0, 4))
		ck_assert_int_eq(mica_db_get_int64(res, 0, 4, &kv), 0);
	ck_assert_int_eq(mica_hex_decode(mica_db_get(res, 0, 7), 64, prev, 32, &n), 0);
	kc_audit_record r = {
		.principal = "mallory",
		.client = mica_db_get(res, 0, 1),
		.op = mica_db_get(res, 0, 2),
		.key_name = mica_db_get(res, 0, 3),
		.key_version = (int32_t)kv,
		.context_hash = mica_db_get(res, 0, 5),
		.result = mica_db_get(res, 0, 6),
	};
	ck_assert_int_eq(kc_audit_record_hash((uint64_t)seq, ts, &r, prev, hash), 0);
	char hex[65];
	ck_assert_int_eq(mica_hex_encode(hash, 32, hex, sizeof(hex)), 0);
	PQclear(res);
	const char *up[2] = {s, hex};
	exec_ok(db,
		"UPDATE keycenter.audit SET principal = 'mallory', hash = decode($2, 'hex')"
		" WHERE seq = $1::bigint",
		2, up);
	mica_db_close(&db);
}

START_TEST(tamper_rewritten_record_and_mac)
{
	make_log50();
	/* Content and hash rewritten consistently: the link from the next
	 * record breaks offline, the MAC gives it away online. */
	rewrite_record(12);
	kc_audit_report rep = export_and_verify();
	assert_verdict(&rep, KC_AUDIT_BROKEN_LINK, 13);
	ck_assert_uint_eq(macs_bad(MICA_EAUTH), 12);
	drop_db();
}
END_TEST

START_TEST(tamper_mac_only)
{
	make_log50();
	sql_as_admin("UPDATE keycenter.audit SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1)"
		     " WHERE seq = 33");
	kc_audit_report rep = export_and_verify(); /* offline, MACs are not checkable */
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	ck_assert_uint_eq(macs_bad(MICA_EAUTH), 33);
	drop_db();
}
END_TEST

static int verify_text(const char *text, kc_audit_report *rep)
{
	FILE *f = fmemopen((void *)text, strlen(text), "r");
	ck_assert_ptr_nonnull(f);
	int rc = kc_audit_verify(f, pubkey_path, rep);
	fclose(f);
	return rc;
}

START_TEST(malformed_input)
{
	make_log50();
	char path[700];
	kc_audit_report rep;
	path_in_work(path, sizeof(path), "malformed.jsonl");
	export_to(path);
	/* Line 5 (record 5) replaced by garbage. */
	FILE *f = fopen(path, "r+");
	ck_assert_ptr_nonnull(f);
	char line[4096];
	long off = 0;
	for (int i = 0; i < 4; i++) {
		ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
		off = ftell(f);
	}
	fseek(f, off, SEEK_SET);
	fputs("{not json", f);
	fclose(f);
	ck_assert_int_eq(verify_path(path, &rep), MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_MALFORMED, 5);
	ck_assert_uint_eq(rep.line, 5);

	ck_assert_int_eq(verify_text("", &rep), MICA_EAUTH); /* no checkpoint */
	assert_verdict(&rep, KC_AUDIT_NO_CHECKPOINT, 1);
	ck_assert_uint_eq(rep.records, 0);
	ck_assert_int_eq(verify_text("\n", &rep), MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_MALFORMED, 1);
	ck_assert_int_eq(verify_text("[1]\n", &rep), MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_MALFORMED, 1);
	ck_assert_int_eq(verify_text("{\"type\":\"record\",\"seq\":1,\"ts_us\":1}\n", &rep),
			 MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_MALFORMED, 1);
	/* seq 0; then a missing key file and a file that is not a key. */
	ck_assert_int_eq(verify_text("{\"type\":\"record\",\"seq\":0,\"ts_us\":1}\n", &rep),
			 MICA_EAUTH);
	assert_verdict(&rep, KC_AUDIT_MALFORMED, 1);
	FILE *in = fmemopen((void *)"", 1, "r");
	ck_assert_int_eq(kc_audit_verify(in, "/nonexistent.pem", &rep), MICA_EINVAL);
	ck_assert_int_eq(kc_audit_verify(in, path, &rep), MICA_EINVAL); /* not a key */
	fclose(in);
	drop_db();
}
END_TEST

/* ---- the CLI ------------------------------------------------------------------ */

/* Runs argv with stdout to |out_path| (NULL: /dev/null), stderr discarded;
 * returns the exit status. */
static int run(char *const argv[], const char *out_path)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int o = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int e = open("/dev/null", O_WRONLY);
		if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(127);
		execv(argv[0], argv);
		_exit(127);
	}
	int st = 0;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void read_first_line(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	if (!fgets(buf, (int)cap, f))
		buf[0] = '\0';
	fclose(f);
}

START_TEST(cli_export_and_verify)
{
	make_log50();
	char mica[600], exp[700], out[700], line[512];
	snprintf(mica, sizeof(mica), "%s/bin/mica", getenv("MICA_BUILD"));
	path_in_work(exp, sizeof(exp), "cli.jsonl");
	path_in_work(out, sizeof(out), "cli.out");

	char *export_argv[] = {mica, "audit", "export", "--db", conninfo, "--out", exp, NULL};
	ck_assert_int_eq(run(export_argv, NULL), 0);
	struct stat sb;
	ck_assert_int_eq(stat(exp, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0600);
	char *verify_argv[] = {mica, "audit", "verify", "--pubkey", pubkey_path, exp, NULL};
	ck_assert_int_eq(run(verify_argv, out), 0);
	read_first_line(out, line, sizeof(line));
	ck_assert_str_eq(line, "OK: 50 records, 5 checkpoints, last checkpoint at seq 50\n");

	sql_as_admin("DELETE FROM keycenter.audit WHERE seq = 23");
	ck_assert_int_eq(run(export_argv, NULL), 0);
	ck_assert_int_eq(run(verify_argv, out), 1);
	read_first_line(out, line, sizeof(line));
	ck_assert_msg(strncmp(line, "FAIL at seq 23: seq_gap: ", 25) == 0, "got: %s", line);

	/* Usage errors, and a key that is not a key. */
	char *no_key[] = {mica, "audit", "verify", exp, NULL};
	ck_assert_int_eq(run(no_key, NULL), 64);
	char *no_sub[] = {mica, "audit", NULL};
	ck_assert_int_eq(run(no_sub, NULL), 64);
	char *bad_key[] = {mica, "audit", "verify", "--pubkey", exp, exp, NULL};
	ck_assert_int_eq(run(bad_key, NULL), 1);
	char *no_db[] = {mica, "audit", "export", "--db", "host=127.0.0.1 port=1 dbname=x", NULL};
	ck_assert_int_eq(run(no_db, NULL), 1);
	drop_db();
}
END_TEST

/* ---- attacks on the whole log (issue 18, item 2) ------------------------------ */

/* Rewrites records |from|..|to| (inclusive) as a superuser without the MAC
 * key or the HSM would: new content, hashes and links recomputed so the
 * chain holds from |from| on; the MACs stay as they were. */
static void rewrite_chain(int from, int to)
{
	uint8_t prev[32];
	int have_prev = 0;
	for (int seq = from; seq <= to; seq++) {
		mica_db *db = open_ci(conninfo);
		char s[16];
		snprintf(s, sizeof(s), "%d", seq);
		const char *p[1] = {s};
		PGresult *res = NULL;
		ck_assert_int_eq(
			mica_db_exec(
				db,
				"SELECT ts_us, client, op, key_name, key_version, context_hash,"
				" result, encode(prev_hash, 'hex') FROM keycenter.audit"
				" WHERE seq = $1::bigint",
				1, p, &res),
			0);
		ck_assert_int_eq(PQntuples(res), 1);
		int64_t ts = 0, kv = 0;
		uint8_t hash[32];
		size_t n = 0;
		ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &ts), 0);
		if (mica_db_get(res, 0, 4))
			ck_assert_int_eq(mica_db_get_int64(res, 0, 4, &kv), 0);
		if (!have_prev)
			ck_assert_int_eq(mica_hex_decode(mica_db_get(res, 0, 7), 64, prev, 32, &n),
					 0);
		kc_audit_record r = {
			.principal = "mallory",
			.client = mica_db_get(res, 0, 1),
			.op = mica_db_get(res, 0, 2),
			.key_name = mica_db_get(res, 0, 3),
			.key_version = (int32_t)kv,
			.context_hash = mica_db_get(res, 0, 5),
			.result = mica_db_get(res, 0, 6),
		};
		ck_assert_int_eq(kc_audit_record_hash((uint64_t)seq, ts, &r, prev, hash), 0);
		char hex[65], prev_hex[65];
		ck_assert_int_eq(mica_hex_encode(hash, 32, hex, sizeof(hex)), 0);
		ck_assert_int_eq(mica_hex_encode(prev, 32, prev_hex, sizeof(prev_hex)), 0);
		PQclear(res);
		const char *up[3] = {s, hex, prev_hex};
		exec_ok(db,
			"UPDATE keycenter.audit SET principal = 'mallory', hash = decode($2, 'hex'),"
			" prev_hash = decode($3, 'hex') WHERE seq = $1::bigint",
			3, up);
		mica_db_close(&db);
		memcpy(prev, hash, 32);
		have_prev = 1;
	}
}

/* Counts the writer's on_published calls. */
struct published {
	atomic_int ok, failed;
};

static void on_published(void *arg, const char *line, int rc)
{
	struct published *p = arg;
	ck_assert(strncmp(line, "{\"type\":\"checkpoint\",\"seq\":", 27) == 0);
	atomic_fetch_add(rc ? &p->failed : &p->ok, 1);
}

static int try_start_opts(int every_n, int every_ms, const char *publish, struct published *pc,
			  kc_audit **out)
{
	kc_audit_options o = {.checkpoint_every_n = every_n,
			      .checkpoint_every_ms = every_ms,
			      .publish_path = publish,
			      .on_published = pc ? on_published : NULL,
			      .published_arg = pc};
	*out = NULL;
	return kc_audit_start(out, writer_ci, mac_key, test_sign, NULL, &o);
}

static kc_audit *start_pub(int every_n, int every_ms, const char *publish, struct published *pc)
{
	kc_audit *a = NULL;
	int rc = try_start_opts(every_n, every_ms, publish, pc, &a);
	ck_assert_msg(rc == 0, "kc_audit_start: %s", mica_strerror(rc));
	return a;
}

/* Starts and stops a writer on the publish file |publish|; its result. */
static int try_resume(const char *publish)
{
	kc_audit *a = NULL;
	int rc = try_start_opts(10, 60000, publish, NULL, &a);
	if (rc == 0)
		kc_audit_stop(a);
	else
		ck_assert_ptr_null(a);
	return rc;
}

/* The newest checkpoint of a checkpoint file, every signature checked. */
static kc_audit_checkpoint read_cp_file(const char *path, uint64_t *lines)
{
	kc_audit_checkpoint cp;
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	int rc = kc_audit_checkpoint_read(f, sign_key, &cp, lines, NULL);
	fclose(f);
	ck_assert_msg(rc == 0, "%s: %s", path, mica_strerror(rc));
	return cp;
}

/* Exports the test database and verifies it with |opt|. */
static kc_audit_report export_and_verify_opts(const kc_audit_verify_options *opt)
{
	char path[700];
	kc_audit_report rep;
	path_in_work(path, sizeof(path), "export.jsonl");
	export_to(path);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	int rc = kc_audit_verify_opts(f, sign_key, opt, &rep);
	fclose(f);
	ck_assert_int_eq(rc, rep.kind == KC_AUDIT_OK ? 0 : MICA_EAUTH);
	return rep;
}

/* make_log50() with a publish file at |publish|, and the auditor's anchor:
 * the newest checkpoint of a verification right after (seq 50). */
static kc_audit_checkpoint make_log50_published(const char *publish)
{
	struct published pc;
	atomic_init(&pc.ok, 0);
	atomic_init(&pc.failed, 0);
	fresh_db();
	unlink(publish);
	kc_audit *a = start_pub(10, 60000, publish, &pc);
	append_n(a, 0, 50, 1);
	kc_audit_stop(a);
	ck_assert_int_eq(atomic_load(&pc.ok), 5);
	ck_assert_int_eq(atomic_load(&pc.failed), 0);
	kc_audit_report rep = export_and_verify_opts(NULL);
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	ck_assert_uint_eq(rep.last_checkpoint.seq, 50);
	/* The publish file holds the same five signed heads. */
	uint64_t lines = 0;
	kc_audit_checkpoint pub = read_cp_file(publish, &lines);
	ck_assert_uint_eq(lines, 5);
	ck_assert_uint_eq(pub.seq, 50);
	ck_assert(memcmp(pub.head_hash, rep.last_checkpoint.head_hash, 32) == 0);
	return rep.last_checkpoint;
}

START_TEST(publish_file_and_checkpoint_lines)
{
	char publish[700], path[700];
	path_in_work(publish, sizeof(publish), "published.jsonl");
	kc_audit_checkpoint anchor = make_log50_published(publish);
	struct stat sb;
	ck_assert_int_eq(stat(publish, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0640);
	/* A restart appends to the file, never truncates it. */
	kc_audit *a = start_pub(10, 60000, publish, NULL);
	append_n(a, 50, 10, 51);
	kc_audit_stop(a);
	uint64_t lines = 0;
	ck_assert_uint_eq(read_cp_file(publish, &lines).seq, 60);
	ck_assert_uint_eq(lines, 6);

	/* A checkpoint line round-trips. */
	char *line = NULL;
	ck_assert_int_eq(kc_audit_checkpoint_line(&anchor, &line), 0);
	path_in_work(path, sizeof(path), "anchor.jsonl");
	FILE *f = fopen(path, "w");
	fprintf(f, "%s\n", line);
	fclose(f);
	free(line);
	kc_audit_checkpoint back = read_cp_file(path, &lines);
	ck_assert_uint_eq(lines, 1);
	ck_assert(back.seq == anchor.seq && back.ts_us == anchor.ts_us &&
		  back.sig_len == anchor.sig_len &&
		  memcmp(&back.sig, &anchor.sig, back.sig_len) == 0);

	/* Files that are not checkpoint lines, and forged signatures. */
	kc_audit_checkpoint cp;
	uint64_t bad = 0;
	FILE *in = fmemopen((void *)"", 0, "r");
	ck_assert_int_eq(kc_audit_checkpoint_read(in, sign_key, &cp, NULL, &bad), MICA_ENOTFOUND);
	fclose(in);
	static const char rec_line[] = "{\"type\":\"record\",\"seq\":1,\"ts_us\":1}\n";
	in = fmemopen((void *)rec_line, sizeof(rec_line) - 1, "r");
	ck_assert_int_eq(kc_audit_checkpoint_read(in, sign_key, &cp, NULL, &bad),
			 MICA_EBADENCODING);
	ck_assert_uint_eq(bad, 1);
	fclose(in);
	kc_audit_checkpoint forged = anchor;
	forged.seq = 49;
	ck_assert_int_eq(kc_audit_checkpoint_line(&forged, &line), 0);
	f = fopen(path, "a");
	fprintf(f, "%s\n", line);
	fclose(f);
	free(line);
	f = fopen(path, "r");
	ck_assert_int_eq(kc_audit_checkpoint_read(f, sign_key, &cp, NULL, &bad), MICA_EAUTH);
	ck_assert_uint_eq(bad, 2);
	fclose(f);
	/* A forged anchor is refused before the log is read. */
	kc_audit_verify_options vo = {.anchors = &forged, .n_anchors = 1};
	kc_audit_report rep;
	in = fmemopen((void *)"", 0, "r");
	ck_assert_int_eq(kc_audit_verify_opts(in, sign_key, &vo, &rep), MICA_EINVAL);
	fclose(in);
	drop_db();
}
END_TEST

/* (a) Every record after the last checkpoint rewritten, by a superuser who
 * also deleted the checkpoints after 20 so that the rewrite is "after the
 * last checkpoint". */
START_TEST(attack_rewrite_after_last_checkpoint)
{
	char publish[700];
	path_in_work(publish, sizeof(publish), "published.jsonl");
	kc_audit_checkpoint anchor = make_log50_published(publish);
	kc_audit_checkpoint published = read_cp_file(publish, NULL);
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq > 20");
	rewrite_chain(21, 50);

	/* Offline, the tail is longer than the writer (every 10) ever leaves. */
	kc_audit_verify_options vo = {.max_unsigned = 10};
	kc_audit_report rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_UNSIGNED_TAIL, 21);
	ck_assert_uint_eq(rep.records, 50);
	ck_assert_uint_eq(rep.last_checkpoint_seq, 20);
	/* The auditor's anchor and the publish file name the rewritten head. */
	vo = (kc_audit_verify_options){.anchors = &anchor, .n_anchors = 1};
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_MISMATCH, 50);
	vo.anchors = &published;
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_MISMATCH, 50);
	/* The Key Center refuses to resume; its MAC check names the first. */
	ck_assert_int_eq(try_resume(publish), MICA_EAUDIT);
	ck_assert_uint_eq(macs_bad(MICA_EAUTH), 21);
	drop_db();
}
END_TEST

/* (b) The log cut back to an earlier checkpoint. */
START_TEST(attack_truncate_to_earlier_checkpoint)
{
	char publish[700];
	path_in_work(publish, sizeof(publish), "published.jsonl");
	kc_audit_checkpoint anchor = make_log50_published(publish);
	kc_audit_checkpoint published = read_cp_file(publish, NULL);
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq > 30");
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq > 30");
	/* What is left is a valid log on its own ... */
	kc_audit_report rep = export_and_verify_opts(NULL);
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	/* ... but not the one the auditor anchored or the Key Center published. */
	kc_audit_checkpoint both[2] = {anchor, published};
	kc_audit_verify_options vo = {.anchors = both, .n_anchors = 2};
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_TRUNCATED, 31);
	ck_assert_uint_eq(rep.anchor, 0);
	vo = (kc_audit_verify_options){.anchors = &published, .n_anchors = 1};
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_TRUNCATED, 31);
	/* The Key Center does not resume from the cut log. */
	ck_assert_int_eq(try_resume(publish), MICA_EAUDIT);
	mica_db *db = open_ci(conninfo);
	ck_assert_int_eq(query_int(db, "SELECT max(seq) FROM keycenter.audit", 0, NULL), 30);
	mica_db_close(&db);
	drop_db();
}
END_TEST

/* (b) while running: the log is cut under a live writer, which must not
 * resynchronise onto it after its next failed batch. */
START_TEST(attack_truncate_under_running_writer)
{
	fresh_db();
	kc_audit *a = start(10, 60000, NULL);
	append_n(a, 0, 50, 1); /* checkpoint at 50 committed */
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq > 30");
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq > 30");
	sql_as_admin("REVOKE INSERT ON keycenter.audit FROM mica_keycenter");
	struct rec_buf b;
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 50), NULL), MICA_EAUDIT);
	sql_as_admin("GRANT INSERT ON keycenter.audit TO mica_keycenter");
	/* The resynchronisation finds the head at 30 < 50: refused. */
	uint64_t seq = 0;
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 51), &seq), MICA_EAUDIT);
	ck_assert_int_eq(kc_audit_append(a, make_rec(&b, 52), &seq), MICA_EAUDIT);
	kc_audit_stop(a);
	mica_db *db = open_ci(conninfo);
	ck_assert_int_eq(query_int(db, "SELECT max(seq) FROM keycenter.audit", 0, NULL), 30);
	mica_db_close(&db);
	drop_db();
}
END_TEST

/* (c) Every checkpoint deleted and the whole history replaced. */
START_TEST(attack_replace_history_without_checkpoints)
{
	char publish[700];
	path_in_work(publish, sizeof(publish), "published.jsonl");
	kc_audit_checkpoint anchor = make_log50_published(publish);
	kc_audit_checkpoint published = read_cp_file(publish, NULL);
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint");
	rewrite_chain(1, 50);
	kc_audit_report rep = export_and_verify_opts(NULL);
	assert_verdict(&rep, KC_AUDIT_NO_CHECKPOINT, 1);
	ck_assert_uint_eq(rep.records, 50);
	ck_assert_uint_eq(rep.line, 51);
	kc_audit_verify_options vo = {.anchors = &anchor, .n_anchors = 1};
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_MISMATCH, 50);
	vo.anchors = &published;
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_MISMATCH, 50);
	/* A shorter forged history is cut before the anchor. */
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq > 40");
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_ANCHOR_TRUNCATED, 41);
	ck_assert_int_eq(try_resume(publish), MICA_EAUDIT);
	/* An empty log has no checkpoint either. */
	sql_as_admin("DELETE FROM keycenter.audit");
	rep = export_and_verify_opts(NULL);
	assert_verdict(&rep, KC_AUDIT_NO_CHECKPOINT, 1);
	ck_assert_int_eq(try_resume(publish), MICA_EAUDIT);
	drop_db();
}
END_TEST

/* The tail may not span more time after the last checkpoint than the writer
 * lets pass (records dated into the future by the one who wrote them). */
START_TEST(unsigned_tail_by_time)
{
	fresh_db();
	kc_audit *a = start(3, 60000, NULL);
	append_n(a, 0, 3, 1); /* checkpoint at 3 */
	struct rec_buf b;
	kc_audit_record r = *make_rec(&b, 3);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	r.ts_us = (int64_t)now.tv_sec * 1000000 + 100 * 1000000LL;
	ck_assert_int_eq(kc_audit_append(a, &r, NULL), 0);
	kc_audit_report rep = export_and_verify_opts(NULL);
	assert_verdict(&rep, KC_AUDIT_UNSIGNED_TAIL, 4);
	/* Within a limit that allows it, the tail is fine. */
	kc_audit_verify_options vo = {.max_unsigned_ms = 200000};
	rep = export_and_verify_opts(&vo);
	assert_verdict(&rep, KC_AUDIT_OK, 0);
	ck_assert_uint_eq(rep.unsigned_tail, 1);
	kc_audit_stop(a); /* signs it */
	assert_chain_ok(4, 4);
	drop_db();
}
END_TEST

/* A tail left unsigned (a crash) is checked and signed at start; one that
 * was rewritten meanwhile is refused even when its last record is intact. */
START_TEST(resume_signs_or_refuses_the_tail)
{
	make_log50();
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq = 50");
	kc_audit *a = start(10, 60000, NULL);
	kc_audit_stats st;
	kc_audit_stats_get(a, &st);
	ck_assert_uint_eq(st.checkpoints, 1);
	kc_audit_stop(a);
	assert_chain_ok(50, 50);

	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq = 50");
	rewrite_chain(41, 49); /* record 50 keeps its hash and MAC */
	ck_assert_int_eq(try_start(mac_key), MICA_EAUDIT);
	drop_db();
}
END_TEST

START_TEST(cli_anchor_workflow)
{
	char publish[700], mica[600], exp[700], out[700], anchor[700], line[512];
	path_in_work(publish, sizeof(publish), "published.jsonl");
	(void)make_log50_published(publish);
	snprintf(mica, sizeof(mica), "%s/bin/mica", getenv("MICA_BUILD"));
	path_in_work(exp, sizeof(exp), "cli.jsonl");
	path_in_work(out, sizeof(out), "cli.out");
	path_in_work(anchor, sizeof(anchor), "auditor.anchor");
	unlink(anchor);
	char *export_argv[] = {mica, "audit", "export", "--db", conninfo, "--out", exp, NULL};
	char *verify_argv[] = {mica,   "audit",	      "verify", "--pubkey", pubkey_path, "--anchor",
			       anchor, "--published", publish,	exp,	    NULL};
	ck_assert_int_eq(run(export_argv, NULL), 0);
	ck_assert_int_eq(run(verify_argv, out), 0);
	read_first_line(out, line, sizeof(line));
	ck_assert_str_eq(line, "OK: 50 records, 5 checkpoints, last checkpoint at seq 50\n");
	ck_assert_uint_eq(read_cp_file(anchor, NULL).seq, 50);
	struct stat sb;
	ck_assert_int_eq(stat(anchor, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0600);

	/* The log grows: the anchor moves on. */
	kc_audit *a = start_pub(10, 60000, publish, NULL);
	append_n(a, 50, 10, 51);
	kc_audit_stop(a);
	ck_assert_int_eq(run(export_argv, NULL), 0);
	ck_assert_int_eq(run(verify_argv, out), 0);
	ck_assert_uint_eq(read_cp_file(anchor, NULL).seq, 60);

	/* Cut back to 40: both the anchor and the publish file catch it, the
	 * anchor stays where it was. */
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq > 40");
	sql_as_admin("DELETE FROM keycenter.audit WHERE seq > 40");
	ck_assert_int_eq(run(export_argv, NULL), 0);
	ck_assert_int_eq(run(verify_argv, out), 1);
	read_first_line(out, line, sizeof(line));
	ck_assert_msg(strncmp(line, "FAIL at seq 41: anchor_truncated: ", 34) == 0, "got: %s",
		      line);
	ck_assert_uint_eq(read_cp_file(anchor, NULL).seq, 60);
	char *pub_only[] = {mica,	   "audit", "verify", "--pubkey", pubkey_path,
			    "--published", publish, exp,      NULL};
	ck_assert_int_eq(run(pub_only, out), 1);
	read_first_line(out, line, sizeof(line));
	ck_assert_msg(strstr(line, "anchor_truncated") && strstr(line, publish), "got: %s", line);

	/* The unsigned-tail limit from the command line; bad numbers. */
	sql_as_admin("DELETE FROM keycenter.audit_checkpoint WHERE seq > 20");
	ck_assert_int_eq(run(export_argv, NULL), 0);
	char *tail[] = {mica, "audit", "verify", "--pubkey", pubkey_path, "--max-unsigned",
			"10", exp,     NULL};
	ck_assert_int_eq(run(tail, out), 1);
	read_first_line(out, line, sizeof(line));
	ck_assert_msg(strncmp(line, "FAIL at seq 21: unsigned_tail: ", 31) == 0, "got: %s", line);
	char *bad_num[] = {mica, "audit", "verify", "--pubkey", pubkey_path, "--max-unsigned",
			   "-1", exp,	  NULL};
	ck_assert_int_eq(run(bad_num, NULL), 64);
	char *mac_usage[] = {mica, "audit", "verify", "--mac", exp, NULL};
	ck_assert_int_eq(run(mac_usage, NULL), 64);
	drop_db();
}
END_TEST

/* ---- setup ----------------------------------------------------------------------- */

static Suite *audit_suite(void)
{
	Suite *s = suite_create("audit");
	TCase *tc = tcase_create("postgres");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, group_commit_from_many_threads);
	tcase_add_test(tc, role_can_only_insert_and_select);
	tcase_add_test(tc, fail_closed_when_database_is_gone);
	tcase_add_test(tc, fail_closed_when_insert_is_refused);
	tcase_add_test(tc, fail_closed_when_signing_fails);
	tcase_add_test(tc, bad_records_are_refused);
	tcase_add_test(tc, restart_continues_the_chain);
	tcase_add_test(tc, timer_checkpoints_the_tail);
	tcase_add_test(tc, tamper_flipped_byte);
	tcase_add_test(tc, tamper_deleted_row);
	tcase_add_test(tc, tamper_reordered_rows);
	tcase_add_test(tc, tamper_truncated_tail);
	tcase_add_test(tc, tamper_checkpoint);
	tcase_add_test(tc, tamper_rewritten_record_and_mac);
	tcase_add_test(tc, tamper_mac_only);
	tcase_add_test(tc, malformed_input);
	tcase_add_test(tc, cli_export_and_verify);
	tcase_add_test(tc, publish_file_and_checkpoint_lines);
	tcase_add_test(tc, attack_rewrite_after_last_checkpoint);
	tcase_add_test(tc, attack_truncate_to_earlier_checkpoint);
	tcase_add_test(tc, attack_truncate_under_running_writer);
	tcase_add_test(tc, attack_replace_history_without_checkpoints);
	tcase_add_test(tc, unsigned_tail_by_time);
	tcase_add_test(tc, resume_signs_or_refuses_the_tail);
	tcase_add_test(tc, cli_anchor_workflow);
	suite_add_tcase(s, tc);
	return s;
}

static int admin_exec(const char *sql)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, admin);
	if (rc == 0)
		rc = mica_db_exec(db, sql, 0, NULL, NULL);
	if (rc)
		fprintf(stderr, "test_audit: %s: %s: %s\n", sql, mica_strerror(rc),
			db ? mica_db_errmsg(db) : mica_db_errmsg(NULL));
	mica_db_close(&db);
	return rc;
}

/* The template database, migrated by the real `mica migrate`. */
static int setup_template(const char *build)
{
	char sql[256], ci[2048], mica[600];
	snprintf(tmpl, sizeof(tmpl), "mica_audit_tmpl_%d", main_pid);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", tmpl);
	if (admin_exec(sql))
		return -1;
	snprintf(ci, sizeof(ci), "%s dbname=%s", admin, tmpl);
	snprintf(mica, sizeof(mica), "%s/bin/mica", build);
	pid_t pid = fork();
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, 1);
		execl(mica, mica, "migrate", "--db", ci, "--schema", "schema", (char *)NULL);
		_exit(127);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr,
			"test_audit: %s migrate failed (status %d); run from the"
			" repository root\n",
			mica, st);
		return -1;
	}
	return 0;
}

static int setup_key(const char *test_dir)
{
	snprintf(workdir, sizeof(workdir), "%s/audit.%d", test_dir, main_pid);
	snprintf(pubkey_path, sizeof(pubkey_path), "%s/checkpoint.pub.pem", workdir);
	if (mkdir(workdir, 0700) != 0 && errno != EEXIST)
		return -1;
	sign_key = EVP_EC_gen("P-256");
	FILE *f = fopen(pubkey_path, "w");
	int ok = sign_key && f && PEM_write_PUBKEY(f, sign_key) == 1;
	if (f && fclose(f) != 0)
		ok = 0;
	return ok ? 0 : -1;
}

/* Drops the template and whatever database a failed test left behind. */
static int cleanup_databases(void)
{
	mica_db *db = NULL;
	char prefix[64], sql[256];
	int rc = mica_db_open(&db, admin);
	PGresult *res = NULL;
	snprintf(prefix, sizeof(prefix), "mica_audit_%d_", main_pid);
	if (rc == 0) {
		const char *p[2] = {tmpl, prefix};
		rc = mica_db_exec(db,
				  "SELECT datname FROM pg_database"
				  " WHERE datname = $1 OR starts_with(datname, $2)",
				  2, p, &res);
	}
	for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
		const char *name = mica_db_get(res, i, 0);
		/* Only names we made: letters, digits and '_'. */
		if (strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(name))
			continue;
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
		rc = mica_db_exec(db, sql, 0, NULL, NULL);
	}
	if (rc)
		fprintf(stderr, "test_audit: cleanup: %s\n", mica_strerror(rc));
	PQclear(res);
	mica_db_close(&db);
	return rc;
}

/* Before the suite: the checkpoint key and the migrated template database. */
static int audit_setup(void)
{
	admin = getenv("MICA_PG_CONNINFO");
	if (strncmp(admin, "postgres", 8) == 0) {
		fprintf(stderr, "test_audit: MICA_PG_CONNINFO must be key=value, not a URI\n");
		return -1;
	}
	main_pid = (int)getpid();
	return setup_key(getenv("MICA_TEST_DIR")) == 0 && setup_template(getenv("MICA_BUILD")) == 0
		       ? 0
		       : -1;
}

static int audit_teardown(void)
{
	int rc = admin && strncmp(admin, "postgres", 8) != 0 ? cleanup_databases() : 0;
	EVP_PKEY_free(sign_key);
	return rc;
}

static const char *const needs[] = {"MICA_PG_CONNINFO", "MICA_BUILD", "MICA_TEST_DIR", NULL};

const struct mica_check mica_check = {.suite = audit_suite,
				      .needs = needs,
				      .setup = audit_setup,
				      .teardown = audit_teardown,
				      .log = MICA_CHECK_LOG_OFF};
