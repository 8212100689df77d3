/* db.c - PostgreSQL access for libmica (see db.h): per-thread handles that
 * borrow lazy libpq connections from a LIFO stack of idle ones, connections
 * that reset themselves after a server restart, a per-connection prepared-
 * statement cache keyed by SQL text, SQLSTATE-to-error mapping, transactions
 * with bounded jittered retry, and LISTEN/NOTIFY plumbing.
 */
#include "db.h"
#include "clock.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"
#include "parse.h"
#include "thread.h"

#define PREP_BUCKETS 128
#define PREP_MAX 512
#define MAX_CHANNELS 32
#define CHANNEL_MAX_LEN 63

/* One cached prepared statement: the server-side name for |sql| on the
 * current connection. */
struct prep {
	struct prep *next;
	uint64_t hash;
	char name[24];
	char sql[];
};

/* A connection and what lives on it server-side: the statements prepared
 * there. A mica_db_thread() handle holds one only while it runs a statement
 * or a transaction, then pushes it onto the process-wide idle stack. */
struct db_link {
	struct db_link *next; /* on the idle stack */
	PGconn *conn;
	struct prep *prep[PREP_BUCKETS];
	unsigned nprep;
	unsigned prep_seq;
	int prep_full_logged;
	int fatal_seen;	      /* server sent FATAL while idle: it is closing us */
	int connected_before; /* a connect of this link is a reconnect */
};

struct mica_db {
	struct db_link link;
	struct db_link *spare; /* a node for the next push onto the idle stack */
	char *conninfo;	       /* may hold a password: wiped on free, never logged */
	char *channels[MAX_CHANNELS];
	int nchannels;
	int in_tx; /* a mica_db_tx() transaction is open */
	enum mica_db_isolation tx_iso;
	int tx_err;			       /* first statement error inside that transaction */
	PGTransactionStatusType last_txstatus; /* as of the end of the last call */
	int woke; /* reconnected since the last mica_db_wait_notify() */
	int thread_owned;
	char sqlstate[6];
	char errmsg[256];
};

/* Connections of thread handles: open ones, and those idle on the stack. */
static atomic_uint g_thread_conns;
static atomic_uint g_idle_conns;

static const char *const begin_sql[] = {
	[MICA_DB_READ_COMMITTED] = "BEGIN ISOLATION LEVEL READ COMMITTED",
	[MICA_DB_REPEATABLE_READ] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
	[MICA_DB_SERIALIZABLE] = "BEGIN ISOLATION LEVEL SERIALIZABLE",
};

/* ---- errors ---------------------------------------------------------- */

static void set_err(mica_db *db, const char *sqlstate, const char *msg)
{
	snprintf(db->sqlstate, sizeof(db->sqlstate), "%s", sqlstate ? sqlstate : "");
	snprintf(db->errmsg, sizeof(db->errmsg), "%s", msg ? msg : "");
	/* libpq messages span lines; keep one line for CLIs and JSON errors. */
	for (char *p = db->errmsg; *p; p++)
		if (*p == '\n' || *p == '\t')
			*p = ' ';
	size_t n = strlen(db->errmsg);
	while (n > 0 && db->errmsg[n - 1] == ' ')
		db->errmsg[--n] = '\0';
}

static void clear_err(mica_db *db)
{
	db->sqlstate[0] = '\0';
	db->errmsg[0] = '\0';
}

static int map_sqlstate(const char *s)
{
	if (!s || strlen(s) != 5)
		return MICA_EDB;
	if (strcmp(s, "23505") == 0)
		return MICA_EEXISTS;
	if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0)
		return MICA_ESERIALIZATION;
	/* Wrong parameter count: reported as a protocol violation, though the
	 * connection is fine. */
	if (strncmp(s, "22", 2) == 0 || strcmp(s, "08P01") == 0)
		return MICA_EINVAL;
	if (strcmp(s, "42501") == 0)
		return MICA_EPERM;
	if (strcmp(s, "57014") == 0)
		return MICA_ETIMEOUT;
	if (strncmp(s, "08", 2) == 0 || strncmp(s, "57P0", 4) == 0)
		return MICA_EDBCONN;
	return MICA_EDB;
}

/* The server is going away (shutdown or terminated backend): a statement
 * that got this answer did not commit, so it is safe to run again. */
static int is_shutdown_state(const char *s)
{
	return s && (strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0);
}

/* Server notices go to the log at debug level with severity and SQLSTATE
 * only, since their text may quote values. A FATAL arriving while idle means
 * the server is closing this connection. */
static void notice_receiver(void *arg, const PGresult *res)
{
	mica_db *db = arg; /* NULL while the connection is idle on the stack */
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (db && sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
		db->link.fatal_seen = 1;
	MICA_LOG(MICA_LOG_DEBUG, "db: server %s sqlstate=%s", sev ? sev : "notice", st ? st : "-");
}

/* ---- prepared statement cache ---------------------------------------- */

/* "cached plan must not change result type": the statement was prepared
 * before a table it reads changed shape. */
static int is_stale_plan(const PGresult *res)
{
	const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	return st && strcmp(st, "0A000") == 0 && msg && strstr(msg, "cached plan") != NULL;
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void prep_clear(struct db_link *l)
{
	for (int i = 0; i < PREP_BUCKETS; i++) {
		struct prep *p = l->prep[i];
		while (p) {
			struct prep *next = p->next;
			free(p);
			p = next;
		}
		l->prep[i] = NULL;
	}
	l->nprep = 0;
}

static struct prep *prep_find(mica_db *db, const char *sql, uint64_t h)
{
	for (struct prep *p = db->link.prep[h % PREP_BUCKETS]; p; p = p->next)
		if (p->hash == h && strcmp(p->sql, sql) == 0)
			return p;
	return NULL;
}

static void prep_remove(mica_db *db, struct prep *victim)
{
	struct prep **pp = &db->link.prep[victim->hash % PREP_BUCKETS];
	for (; *pp; pp = &(*pp)->next) {
		if (*pp == victim) {
			*pp = victim->next;
			free(victim);
			db->link.nprep--;
			return;
		}
	}
}

/* ---- connection ------------------------------------------------------ */

static int channel_valid(const char *c)
{
	size_t n = c ? strlen(c) : 0;
	if (n == 0 || n > CHANNEL_MAX_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = c[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_'))
			return 0;
	}
	return 1;
}

/* LISTEN on a validated channel. The name is an identifier, which cannot be
 * a parameter; channel_valid() allows only [A-Za-z0-9_], so quoting it is
 * safe. */
static int listen_raw(mica_db *db, const char *channel)
{
	char sql[CHANNEL_MAX_LEN + 16];
	snprintf(sql, sizeof(sql), "LISTEN \"%s\"", channel);
	PGresult *r = PQexec(db->link.conn, sql);
	int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok)
		set_err(db, r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : "",
			r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
			  : PQerrorMessage(db->link.conn));
	PQclear(r);
	return ok;
}

static void drop_conn(mica_db *db)
{
	if (db->link.conn) {
		PQfinish(db->link.conn);
		if (db->thread_owned)
			atomic_fetch_sub(&g_thread_conns, 1);
	}
	db->link.conn = NULL;
	prep_clear(&db->link);
	db->link.fatal_seen = 0;
	db->last_txstatus = PQTRANS_IDLE;
}

/* (Re)connects. Server-side state is per session, so the statement cache is
 * emptied and the LISTENs are re-issued. */
static int db_connect(mica_db *db)
{
	/* Defaults come before "dbname" so the conninfo's own values win. JIT
	 * is off: every mica statement is short, and a table bloated between
	 * vacuums (a queue's deletes) can make the planner's estimate cross
	 * jit_above_cost, which then compiles for ~50 ms a statement that runs
	 * in one. */
	static const char *const keys[] = {"connect_timeout", "application_name", "options",
					   "dbname", NULL};
	const char *vals[] = {"10", "mica", "-c jit=off", db->conninfo, NULL};

	drop_conn(db);
	PGconn *c = PQconnectdbParams(keys, vals, 1);
	if (!c) {
		set_err(db, "", "out of memory");
		return MICA_ENOMEM;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		set_err(db, "", PQerrorMessage(c));
		/* libpq's connection errors name host, port and user, never the
		 * password. */
		MICA_LOG(MICA_LOG_WARN, "db: connect failed: %s", db->errmsg);
		PQfinish(c);
		return MICA_EDBCONN;
	}
	PQsetNoticeReceiver(c, notice_receiver, db);
	db->link.conn = c;
	if (db->thread_owned)
		atomic_fetch_add(&g_thread_conns, 1);
	for (int i = 0; i < db->nchannels; i++) {
		if (!listen_raw(db, db->channels[i])) {
			MICA_LOG(MICA_LOG_WARN, "db: re-LISTEN after connect failed: %s",
				 db->errmsg);
			drop_conn(db);
			return MICA_EDBCONN;
		}
	}
	if (db->link.connected_before) {
		MICA_LOG(MICA_LOG_INFO, "db: reconnected");
		db->woke = 1;
	}
	db->link.connected_before = 1;
	return 0;
}

/* True if the connection looks alive. A restarted server has closed its end:
 * the socket then reads a FATAL notice and/or EOF, which we detect here
 * before sending anything, so nothing is ever sent on a dead connection
 * that we could have known was dead. */
static int conn_usable(mica_db *db)
{
	if (!db->link.conn || PQstatus(db->link.conn) != CONNECTION_OK || db->link.fatal_seen)
		return 0;
	for (int i = 0; i < 8; i++) {
		struct pollfd p = {.fd = PQsocket(db->link.conn), .events = POLLIN};
		if (p.fd < 0)
			return 0;
		int r = poll(&p, 1, 0);
		if (r <= 0)
			break; /* nothing pending (or EINTR): assume alive */
		if (!PQconsumeInput(db->link.conn) || PQstatus(db->link.conn) != CONNECTION_OK ||
		    db->link.fatal_seen)
			return 0;
	}
	return 1;
}

static mica_db *db_new(const char *conninfo)
{
	mica_db *db = calloc(1, sizeof(*db));
	if (!db)
		return NULL;
	db->conninfo = strdup(conninfo);
	if (!db->conninfo) {
		free(db);
		return NULL;
	}
	db->last_txstatus = PQTRANS_IDLE;
	return db;
}

static void db_free(mica_db *db)
{
	if (!db)
		return;
	drop_conn(db);
	free(db->spare);
	for (int i = 0; i < db->nchannels; i++)
		free(db->channels[i]);
	mica_free_wipe(db->conninfo); /* may hold a password */
	free(db);
}

/* ---- process-wide and per-thread handles ----------------------------- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_conninfo;
static __thread char open_errmsg[256]; /* why this thread's last open failed */
static pthread_key_t g_key;
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static int g_key_ok;

/* The idle connections of thread handles, most recently used on top. */
static pthread_mutex_t g_idle_mu = PTHREAD_MUTEX_INITIALIZER;
static struct db_link *g_idle;

/* Whether |db| borrows its connection from the idle stack: thread handles,
 * unless they LISTEN (a listener keeps its session). */
static int pooled(const mica_db *db)
{
	return db->thread_owned && db->nchannels == 0;
}

/* Gives |db| the connection used last, if one is idle; otherwise the
 * statement connects a new one. */
static void link_take(mica_db *db)
{
	if (!pooled(db) || db->link.conn)
		return;
	pthread_mutex_lock(&g_idle_mu);
	struct db_link *l = g_idle;
	if (l) {
		g_idle = l->next;
		atomic_fetch_sub(&g_idle_conns, 1);
	}
	pthread_mutex_unlock(&g_idle_mu);
	if (!l)
		return;
	db->link = *l;
	db->link.next = NULL;
	if (db->spare)
		free(l);
	else
		db->spare = l;
	PQsetNoticeReceiver(db->link.conn, notice_receiver, db);
}

/* Pushes |db|'s connection onto the idle stack when nothing is open on it
 * (no transaction); a broken one stays, for the next statement to reset. */
static void link_give(mica_db *db)
{
	if (!pooled(db) || db->in_tx || !db->link.conn ||
	    PQstatus(db->link.conn) != CONNECTION_OK ||
	    PQtransactionStatus(db->link.conn) != PQTRANS_IDLE)
		return;
	struct db_link *l = db->spare ? db->spare : malloc(sizeof(*l));
	if (!l)
		return; /* it stays this thread's until a later push finds memory */
	db->spare = NULL;
	PQsetNoticeReceiver(db->link.conn, notice_receiver, NULL);
	*l = db->link;
	memset(&db->link, 0, sizeof(db->link));
	pthread_mutex_lock(&g_idle_mu);
	l->next = g_idle;
	g_idle = l;
	atomic_fetch_add(&g_idle_conns, 1);
	pthread_mutex_unlock(&g_idle_mu);
}

static void idle_close_all(void)
{
	pthread_mutex_lock(&g_idle_mu);
	struct db_link *l = g_idle;
	g_idle = NULL;
	atomic_store(&g_idle_conns, 0);
	pthread_mutex_unlock(&g_idle_mu);
	while (l) {
		struct db_link *next = l->next;
		PQfinish(l->conn);
		atomic_fetch_sub(&g_thread_conns, 1);
		prep_clear(l);
		free(l);
		l = next;
	}
}

static void thread_handle_destroy(void *p)
{
	db_free(p);
}

static void key_create(void)
{
	g_key_ok = pthread_key_create(&g_key, thread_handle_destroy) == 0;
}

int mica_db_global_init(const char *conninfo)
{
	if (!conninfo || !*conninfo)
		return MICA_EINVAL;
	pthread_once(&g_key_once, key_create);
	if (!g_key_ok)
		return MICA_ENOMEM;
	int rc = 0;
	pthread_mutex_lock(&g_mu);
	if (g_conninfo) {
		rc = MICA_ESTATE;
	} else {
		g_conninfo = strdup(conninfo);
		if (!g_conninfo)
			rc = MICA_ENOMEM;
	}
	pthread_mutex_unlock(&g_mu);
	return rc;
}

void mica_db_global_cleanup(void)
{
	pthread_mutex_lock(&g_mu);
	if (g_conninfo) {
		mica_free_wipe(g_conninfo);
		g_conninfo = NULL;
	}
	pthread_mutex_unlock(&g_mu);
	if (g_key_ok) {
		mica_db *db = pthread_getspecific(g_key);
		if (db) {
			pthread_setspecific(g_key, NULL);
			db_free(db);
		}
	}
	idle_close_all();
}

mica_db *mica_db_thread(void)
{
	pthread_once(&g_key_once, key_create);
	if (!g_key_ok)
		return NULL;
	mica_db *db = pthread_getspecific(g_key);
	if (db)
		return db;
	pthread_mutex_lock(&g_mu);
	if (g_conninfo)
		db = db_new(g_conninfo);
	int inited = g_conninfo != NULL;
	pthread_mutex_unlock(&g_mu);
	if (!inited) {
		MICA_LOG(MICA_LOG_ERROR, "db: mica_db_thread() before mica_db_global_init()");
		return NULL;
	}
	if (!db || pthread_setspecific(g_key, db) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "db: out of memory creating thread handle");
		db_free(db);
		return NULL;
	}
	db->thread_owned = 1;
	return db;
}

void mica_db_thread_connections(unsigned *open, unsigned *idle)
{
	*idle = atomic_load(&g_idle_conns);
	*open = atomic_load(&g_thread_conns);
	if (*open < *idle)
		*open = *idle; /* read between a push and its count */
}

int mica_db_open(mica_db **out, const char *conninfo)
{
	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	MICA_BLOCKING_ENTRY();
	if (!conninfo)
		return MICA_EINVAL;
	mica_db *db = db_new(conninfo);
	if (!db)
		return MICA_ENOMEM;
	int rc = db_connect(db);
	if (rc) {
		snprintf(open_errmsg, sizeof(open_errmsg), "%s", db->errmsg);
		db_free(db);
		return rc;
	}
	*out = db;
	return 0;
}

void mica_db_close(mica_db **dbp)
{
	if (!dbp || !*dbp)
		return;
	if (!(*dbp)->thread_owned)
		db_free(*dbp);
	*dbp = NULL;
}

/* ---- statements ------------------------------------------------------ */

/* Classifies |res| (NULL allowed). Sets *lost when the connection broke. */
static int classify(mica_db *db, const PGresult *res, int *lost)
{
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	*lost = 0;
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY)
		return 0;
	if (res && (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)) {
		/* COPY would leave the connection mid-protocol; we never issue it. */
		set_err(db, "", "COPY is not supported through mica_db");
		drop_conn(db);
		*lost = 1;
		return MICA_EINVAL;
	}
	const char *ss = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	set_err(db, ss, msg ? msg : PQerrorMessage(db->link.conn));
	if (PQstatus(db->link.conn) != CONNECTION_OK || is_shutdown_state(ss)) {
		*lost = 1;
		return MICA_EDBCONN;
	}
	if (!res)
		return MICA_ENOMEM;
	return map_sqlstate(ss);
}

/* One try on a live connection. *retry is set when nothing can have been
 * executed and the failure is one a fresh connection fixes. */
static int exec_once(mica_db *db, const char *sql, int n, const char *const *params, int script,
		     PGresult **res, int *retry)
{
	int lost = 0;
	*retry = 0;
	*res = NULL;
	if (script) {
		*res = PQexec(db->link.conn, sql);
		int rc = classify(db, *res, &lost);
		*retry = lost && is_shutdown_state(db->sqlstate);
		return rc;
	}

	uint64_t h = fnv1a(sql);
	struct prep *p = prep_find(db, sql, h);
	if (!p && db->link.nprep < PREP_MAX) {
		size_t len = strlen(sql);
		p = malloc(sizeof(*p) + len + 1);
		if (!p) {
			set_err(db, "", "out of memory");
			return MICA_ENOMEM;
		}
		p->hash = h;
		snprintf(p->name, sizeof(p->name), "mica_%u", ++db->link.prep_seq);
		memcpy(p->sql, sql, len + 1);
		PGresult *pr = PQprepare(db->link.conn, p->name, sql, n, NULL);
		int rc = classify(db, pr, &lost);
		PQclear(pr);
		if (rc) {
			free(p);
			*retry = lost; /* preparing has no effects to repeat */
			return rc;
		}
		p->next = db->link.prep[h % PREP_BUCKETS];
		db->link.prep[h % PREP_BUCKETS] = p;
		db->link.nprep++;
	} else if (!p && !db->link.prep_full_logged) {
		db->link.prep_full_logged = 1;
		MICA_LOG(MICA_LOG_WARN, "db: statement cache full (%d); is SQL built at run time?",
			 PREP_MAX);
	}

	if (p)
		*res = PQexecPrepared(db->link.conn, p->name, n, params, NULL, NULL, 0);
	else
		*res = PQexecParams(db->link.conn, sql, n, NULL, params, NULL, NULL, 0);
	int rc = classify(db, *res, &lost);
	if (rc && p && strcmp(db->sqlstate, "26000") == 0) {
		/* Someone ran DEALLOCATE/DISCARD: forget it and prepare again. */
		prep_remove(db, p);
		*retry = 1;
	} else if (rc && p && is_stale_plan(*res)) {
		/* DDL (a migration) changed the result's shape under our cached
		 * statement. Prepare it afresh: at once outside a transaction, or
		 * through mica_db_tx()'s retry (the transaction is aborted). */
		char stale[sizeof(p->name)];
		memcpy(stale, p->name, sizeof(stale));
		prep_remove(db, p);
		if (PQtransactionStatus(db->link.conn) == PQTRANS_IDLE) {
			char sql_dealloc[sizeof(stale) + 16];
			snprintf(sql_dealloc, sizeof(sql_dealloc), "DEALLOCATE %s", stale);
			PQclear(PQexec(db->link.conn, sql_dealloc));
			*retry = 1;
		} else {
			rc = MICA_ESERIALIZATION;
		}
	} else {
		*retry = lost && is_shutdown_state(db->sqlstate);
	}
	return rc;
}

static int log_level_for(int rc)
{
	if (rc == MICA_EEXISTS || rc == MICA_ESERIALIZATION)
		return MICA_LOG_DEBUG;
	return MICA_LOG_WARN;
}

static int run_linked(mica_db *db, const char *sql, int n, const char *const *params, int script,
		      PGresult **out)
{
	if (out)
		*out = NULL;
	if (!db || !sql || n < 0 || n > 65535 || (n > 0 && !params))
		return MICA_EINVAL;
	clear_err(db);

	for (int attempt = 0;; attempt++) {
		if (!conn_usable(db)) {
			int was_in_tx = db->in_tx || db->last_txstatus == PQTRANS_INTRANS ||
					db->last_txstatus == PQTRANS_INERROR;
			if (was_in_tx && db->link.conn) {
				/* Reconnecting here would silently drop the open
				 * transaction and run the rest in autocommit. */
				set_err(db, "", "connection lost inside a transaction");
				MICA_LOG(MICA_LOG_WARN, "db: %s", db->errmsg);
				drop_conn(db);
				if (db->in_tx && !db->tx_err)
					db->tx_err = MICA_EDBCONN;
				return MICA_EDBCONN;
			}
			if (db->in_tx) {
				set_err(db, "", "connection lost inside a transaction");
				return MICA_EDBCONN;
			}
			int rc = db_connect(db);
			if (rc)
				return rc;
		}
		int idle = !db->in_tx && PQtransactionStatus(db->link.conn) == PQTRANS_IDLE;
		PGresult *res = NULL;
		int retry = 0;
		int rc = exec_once(db, sql, n, params, script, &res, &retry);
		db->last_txstatus =
			db->link.conn ? PQtransactionStatus(db->link.conn) : PQTRANS_IDLE;
		if (rc == 0) {
			if (out)
				*out = res;
			else
				PQclear(res);
			return 0;
		}
		PQclear(res);
		if (idle && retry && attempt == 0) {
			MICA_LOG(MICA_LOG_INFO, "db: sqlstate=%s, retrying once", db->sqlstate);
			continue;
		}
		if (db->in_tx && !db->tx_err)
			db->tx_err = rc;
		MICA_LOG(log_level_for(rc), "db: statement failed: %s sqlstate=%s sql=\"%.60s\"",
			 mica_strerror(rc), db->sqlstate[0] ? db->sqlstate : "-", sql);
		return rc;
	}
}

/* One statement on a connection taken from the idle stack (thread handles),
 * which goes back there after it unless a transaction is open on it. */
static int db_run(mica_db *db, const char *sql, int n, const char *const *params, int script,
		  PGresult **out)
{
	if (db)
		link_take(db);
	int rc = run_linked(db, sql, n, params, script, out);
	if (db)
		link_give(db);
	return rc;
}

int mica_db_exec(mica_db *db, const char *sql, int nparams, const char *const *params,
		 PGresult **out)
{
	if (out)
		*out = NULL;
	MICA_BLOCKING_ENTRY();
	return db_run(db, sql, nparams, params, 0, out);
}

int mica_db_exec_trusted_script(mica_db *db, const char *script)
{
	MICA_BLOCKING_ENTRY();
	return db_run(db, script, 0, NULL, 1, NULL);
}

/* ---- transactions ---------------------------------------------------- */

static void backoff(int attempt)
{
	static __thread unsigned seed;
	if (!seed)
		seed = (unsigned)mica_clock_ms() ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)&seed;
	long cap_ms = 5L << (attempt < 6 ? attempt : 6);
	if (cap_ms > 200)
		cap_ms = 200;
	long ms = cap_ms / 2 + rand_r(&seed) % (cap_ms / 2 + 1);
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void rollback(mica_db *db)
{
	if (db->link.conn && PQstatus(db->link.conn) == CONNECTION_OK) {
		PGresult *r = PQexec(db->link.conn, "ROLLBACK");
		PQclear(r);
		db->last_txstatus = PQtransactionStatus(db->link.conn);
	}
	db->in_tx = 0;
}

/* COMMIT with in_tx still set, so a lost connection is never "retried" on a
 * fresh one (where COMMIT would succeed doing nothing). */
static int commit(mica_db *db)
{
	PGresult *res = NULL;
	int rc = db_run(db, "COMMIT", 0, NULL, 0, &res);
	if (rc == 0 && strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
		rc = db->tx_err ? db->tx_err : MICA_EDB;
	PQclear(res);
	db->in_tx = 0;
	return rc;
}

static int tx_run(mica_db *db, enum mica_db_isolation isolation, mica_db_tx_fn fn, void *arg)
{
	if (!db || !fn || (int)isolation < MICA_DB_READ_COMMITTED ||
	    isolation > MICA_DB_SERIALIZABLE)
		return MICA_EINVAL;
	if (db->in_tx)
		return isolation > db->tx_iso ? MICA_ESTATE : fn(db, arg);
	if (db->link.conn && PQstatus(db->link.conn) == CONNECTION_OK &&
	    PQtransactionStatus(db->link.conn) != PQTRANS_IDLE)
		return MICA_ESTATE; /* an explicit BEGIN is open */

	int rc = MICA_ESERIALIZATION;
	for (int attempt = 1; attempt <= MICA_DB_TX_MAX_ATTEMPTS; attempt++) {
		if (attempt > 1)
			backoff(attempt);
		int brc = db_run(db, begin_sql[isolation], 0, NULL, 0, NULL);
		if (brc)
			return brc;
		db->in_tx = 1;
		db->tx_iso = isolation;
		db->tx_err = 0;

		int frc = fn(db, arg);
		if (frc == 0 && db->link.conn &&
		    PQtransactionStatus(db->link.conn) == PQTRANS_INERROR)
			frc = db->tx_err ? db->tx_err : MICA_EDB;
		if (frc == 0 && !conn_usable(db))
			frc = MICA_EDBCONN; /* lost before COMMIT was sent: safe to retry */
		if (frc == 0) {
			rc = commit(db);
			if (rc == 0)
				return 0;
			if (rc == MICA_ESERIALIZATION)
				continue; /* failed at commit-time check; nothing committed */
			if (rc == MICA_EDBCONN)
				MICA_LOG(MICA_LOG_ERROR,
					 "db: connection lost during COMMIT; outcome unknown");
			return rc;
		}
		rollback(db);
		if (frc == MICA_ESERIALIZATION) {
			rc = frc;
			continue;
		}
		if (frc == MICA_EDBCONN && !conn_usable(db)) {
			rc = frc; /* lost before COMMIT was sent: nothing committed */
			continue;
		}
		return frc;
	}
	MICA_LOG(MICA_LOG_WARN, "db: transaction gave up after %d attempts: %s",
		 MICA_DB_TX_MAX_ATTEMPTS, mica_strerror(rc));
	return rc;
}

int mica_db_tx(mica_db *db, enum mica_db_isolation isolation, mica_db_tx_fn fn, void *arg)
{
	MICA_BLOCKING_ENTRY();
	int rc = tx_run(db, isolation, fn, arg);
	if (db)
		link_give(db); /* held from BEGIN through COMMIT or ROLLBACK */
	return rc;
}

int mica_db_in_transaction(mica_db *db)
{
	if (!db)
		return 0;
	if (db->in_tx)
		return 1;
	if (!db->link.conn || PQstatus(db->link.conn) != CONNECTION_OK)
		return 0;
	PGTransactionStatusType s = PQtransactionStatus(db->link.conn);
	return s == PQTRANS_INTRANS || s == PQTRANS_INERROR;
}

const char *mica_db_sqlstate(const mica_db *db)
{
	return db ? db->sqlstate : "";
}

const char *mica_db_errmsg(const mica_db *db)
{
	return db ? db->errmsg : open_errmsg;
}

/* ---- results --------------------------------------------------------- */

const char *mica_db_get(const PGresult *res, int row, int col)
{
	if (!res || row < 0 || col < 0 || row >= PQntuples(res) || col >= PQnfields(res))
		return NULL;
	if (PQgetisnull(res, row, col))
		return NULL;
	return PQgetvalue(res, row, col);
}

int mica_db_get_int64(const PGresult *res, int row, int col, int64_t *out)
{
	const char *v = mica_db_get(res, row, col);
	if (!v)
		return MICA_ENOTFOUND;
	return mica_parse_int64(v, INT64_MIN, INT64_MAX, out);
}

/* ---- LISTEN/NOTIFY --------------------------------------------------- */

int mica_db_listen(mica_db *db, const char *channel)
{
	MICA_BLOCKING_ENTRY();
	if (!db || !channel_valid(channel))
		return MICA_EINVAL;
	if (mica_db_in_transaction(db))
		return MICA_ESTATE;
	for (int i = 0; i < db->nchannels; i++) {
		if (strcmp(db->channels[i], channel) == 0)
			return conn_usable(db) ? 0 : db_connect(db);
	}
	if (db->nchannels == MAX_CHANNELS)
		return MICA_ETOOBIG;
	char *copy = strdup(channel);
	if (!copy)
		return MICA_ENOMEM;
	db->channels[db->nchannels++] = copy;
	int rc;
	if (conn_usable(db)) {
		char sql[CHANNEL_MAX_LEN + 16];
		snprintf(sql, sizeof(sql), "LISTEN \"%s\"", channel);
		rc = db_run(db, sql, 0, NULL, 1, NULL);
	} else {
		rc = db_connect(db); /* issues every LISTEN, this one included */
	}
	if (rc) {
		free(db->channels[--db->nchannels]);
		db->channels[db->nchannels] = NULL;
	}
	return rc;
}

int mica_db_socket(mica_db *db)
{
	if (!db || !db->link.conn || PQstatus(db->link.conn) != CONNECTION_OK)
		return -1;
	return PQsocket(db->link.conn);
}

int mica_db_drain_notifications(mica_db *db, mica_db_notify_fn fn, void *arg, int *count)
{
	if (count)
		*count = 0;
	if (!db)
		return MICA_EINVAL;
	if (!db->link.conn || PQstatus(db->link.conn) != CONNECTION_OK) {
		set_err(db, "", "not connected");
		return MICA_EDBCONN;
	}
	if (!PQconsumeInput(db->link.conn) || db->link.fatal_seen) {
		set_err(db, "", PQerrorMessage(db->link.conn));
		MICA_LOG(MICA_LOG_WARN, "db: connection lost while listening");
		drop_conn(db);
		return MICA_EDBCONN;
	}
	PGnotify *n;
	int drained = 0;
	while ((n = PQnotifies(db->link.conn)) != NULL) {
		if (fn)
			fn(n->relname, n->extra ? n->extra : "", arg);
		drained++;
		PQfreemem(n);
	}
	if (count)
		*count = drained;
	return 0;
}

int mica_db_wait_notify(mica_db *db, int timeout_ms, mica_db_notify_fn fn, void *arg)
{
	MICA_BLOCKING_ENTRY();
	if (!db || timeout_ms < 0)
		return MICA_EINVAL;
	if (mica_db_in_transaction(db))
		return MICA_ESTATE;
	if (!conn_usable(db)) {
		int rc = db_connect(db);
		if (rc)
			return rc;
	}
	if (db->woke) {
		db->woke = 0;
		return 0;
	}
	int64_t deadline = mica_clock_ms() + timeout_ms;
	for (;;) {
		int got = 0;
		int rc = mica_db_drain_notifications(db, fn, arg, &got);
		if (rc)
			return rc;
		if (got > 0)
			return 0;
		int64_t left = deadline - mica_clock_ms();
		if (left <= 0)
			return MICA_ETIMEOUT;
		struct pollfd p = {.fd = PQsocket(db->link.conn), .events = POLLIN};
		if (poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left) < 0 && errno != EINTR) {
			set_err(db, "", "poll failed");
			return MICA_EDBCONN;
		}
	}
}

/* ---- array and bytea parameters ------------------------------------------------- */

char *mica_db_text_array(const char *const *items, size_t n)
{
	size_t cap = 3;
	for (size_t i = 0; i < n; i++)
		cap += 2 * strlen(items[i]) + 3;
	char *out = malloc(cap), *o = out;
	if (!out)
		return NULL;
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*o++ = ',';
		*o++ = '"';
		for (const char *c = items[i]; *c; c++) {
			if (*c == '"' || *c == '\\')
				*o++ = '\\';
			*o++ = *c;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

char *mica_db_bytea_encode(const void *data, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = data;
	char *out = malloc(2 * len + 3);
	if (!out)
		return NULL;
	out[0] = '\\';
	out[1] = 'x';
	for (size_t i = 0; i < len; i++) {
		out[2 + 2 * i] = hex[p[i] >> 4];
		out[3 + 2 * i] = hex[p[i] & 15];
	}
	out[2 + 2 * len] = '\0';
	return out;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int mica_db_get_bytea(const PGresult *res, int row, int col, uint8_t **out, size_t *len)
{
	const char *v = mica_db_get(res, row, col);
	size_t n;
	*out = NULL;
	*len = 0;
	if (!v)
		return MICA_ENOTFOUND;
	n = strlen(v);
	if (n < 2 || v[0] != '\\' || v[1] != 'x' || n % 2)
		return MICA_EINVAL;
	if (!(*out = malloc(n / 2 ? n / 2 : 1)))
		return MICA_ENOMEM;
	for (size_t i = 2; i < n; i += 2) {
		int hi = hexval(v[i]), lo = hexval(v[i + 1]);
		if (hi < 0 || lo < 0) {
			free(*out);
			*out = NULL;
			return MICA_EINVAL;
		}
		(*out)[(i - 2) / 2] = (uint8_t)(hi << 4 | lo);
	}
	*len = (n - 2) / 2;
	return 0;
}

/* ---- conninfo ------------------------------------------------------------- */

char *mica_db_conninfo_with_password(const char *conninfo, const char *password)
{
	size_t n = strlen(conninfo), pl = password ? strlen(password) : 0;
	char *out = malloc(n + 2 * pl + 16), *w;
	if (!out)
		return NULL;
	memcpy(out, conninfo, n);
	w = out + n;
	if (pl) {
		memcpy(w, " password='", 11);
		w += 11;
		for (size_t i = 0; i < pl; i++) {
			if (password[i] == '\'' || password[i] == '\\')
				*w++ = '\\';
			*w++ = password[i];
		}
		*w++ = '\'';
	}
	*w = '\0';
	return out;
}
