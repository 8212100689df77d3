/* db.h - PostgreSQL access for libmica: per-thread handles over a shared
 * stack of idle libpq connections, parameterised statements with a
 * per-connection prepared-statement cache, transactions that retry on
 * serialization failure, deadlock and lost connections, SQLSTATE mapping,
 * and LISTEN/NOTIFY.
 *
 * Rules callers rely on:
 * - SQL text is constant program text. Every value travels as a parameter
 *   ($1, $2, ... in text format); nothing here formats input into SQL.
 * - A handle is used by one thread at a time. mica_db_thread() gives each
 *   thread its own handle; mica_db_open() gives an explicit one.
 * - A thread handle holds a connection only while a statement or a
 *   transaction runs; then the connection goes back to a process-wide stack
 *   of idle ones, and the next statement of any thread takes the one that
 *   went idle last. So a process opens as many connections as it runs
 *   statements at once, and a light load keeps reusing the same warm few
 *   backends instead of waking every thread's own in turn. Session state
 *   therefore does not follow a thread handle from one statement to the
 *   next: use a transaction (or set_config(name, $1, true) inside one).
 *   A thread handle that LISTENs keeps its connection for good.
 * - Connections are lazy and self-healing: when the server restarted, the
 *   next call outside a transaction reconnects and runs normally. Session
 *   state (SET, temporary tables, session advisory locks) does not survive
 *   that; put settings in the conninfo (options='-c name=value') or use
 *   set_config(name, $1, true) inside a transaction.
 * - Results are libpq PGresult objects owned by the caller (PQclear()).
 * - Nothing about a statement's parameters or the conninfo's password is
 *   ever logged; failures log the SQLSTATE and the start of the SQL text.
 * - Every call that talks to the server blocks: on an event thread
 *   (lib/thread.h) mica_db_open, mica_db_exec, mica_db_exec_trusted_script,
 *   mica_db_tx, mica_db_listen and mica_db_wait_notify return
 *   MICA_EWOULDBLOCK at once, before touching a connection (the other
 *   calls only read state already in memory).
 */
#ifndef MICA_DB_H
#define MICA_DB_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "err.h"

typedef struct mica_db mica_db;

/* Attempts mica_db_tx() makes before giving up with MICA_ESERIALIZATION. */
#define MICA_DB_TX_MAX_ATTEMPTS 5

enum mica_db_isolation {
	MICA_DB_READ_COMMITTED = 0,
	MICA_DB_REPEATABLE_READ = 1,
	MICA_DB_SERIALIZABLE = 2,
};

/* Sets the process-wide conninfo used by mica_db_thread() handles. Call once
 * at start-up before other threads use the database. |conninfo| is copied.
 * Returns 0, MICA_EINVAL (NULL/empty), MICA_ESTATE (already initialised;
 * call mica_db_global_cleanup() first) or MICA_ENOMEM. */
MICA_WUR int mica_db_global_init(const char *conninfo);

/* Forgets the process-wide conninfo, closes the calling thread's handle and
 * every idle connection. Other threads' handles close when those threads
 * exit. Safe to call twice. */
void mica_db_global_cleanup(void);

/* This thread's handle, created on first use (each statement outside a
 * transaction takes a connection from the idle stack or opens one, see
 * above). Owned by the library: it is closed when the thread exits; do not
 * pass it to mica_db_close(). Returns NULL if mica_db_global_init() was not
 * called or memory ran out (logged). */
mica_db *mica_db_thread(void);

/* How many connections the process's thread handles hold open, and how many
 * of those wait idle on the stack (the others run a statement, hold a
 * transaction or LISTEN). For /metrics; the two are read apart, so under
 * load they are a moment's picture, not an exact pair. */
void mica_db_thread_connections(unsigned *open, unsigned *idle);

/* Opens an explicit handle on |conninfo| (copied) and connects now, so tools
 * fail early. On success *out is the new handle, freed by mica_db_close().
 * Returns 0, MICA_EINVAL, MICA_ENOMEM, or MICA_EDBCONN if the server is
 * unreachable or refuses us (*out is NULL then). */
MICA_WUR int mica_db_open(mica_db **out, const char *conninfo);

/* Closes the handle in *dbp and sets *dbp to NULL; NULL and already-closed
 * handles are ignored, so calling it twice is safe. For a mica_db_thread()
 * handle it only clears *dbp. */
void mica_db_close(mica_db **dbp);

/* Runs one statement. |sql| is constant text with $1..$n placeholders;
 * |params| holds |nparams| NUL-terminated text values (an element may be NULL
 * for SQL NULL). The statement is prepared once per connection and reused
 * (up to 512 distinct texts per connection; beyond that, statements run
 * unnamed). If |out| is non-NULL, *out receives the result on success (the
 * caller PQclear()s it) and NULL on failure.
 *
 * Outside a transaction, a connection found dead (server restarted) is reset
 * before sending, and a statement the server rejected because it was shutting
 * down is retried once on a fresh connection. A statement whose connection
 * broke after it was sent is not retried (it may have committed). A cached
 * statement invalidated by DDL ("cached plan must not change result type")
 * is prepared again: at once outside a transaction; inside one it returns
 * MICA_ESERIALIZATION so that mica_db_tx() retries the transaction.
 *
 * Returns 0 or:
 *   MICA_EEXISTS         unique violation (23505)
 *   MICA_ESERIALIZATION  serialization failure (40001) or deadlock (40P01)
 *   MICA_EINVAL          bad arguments (also a parameter count the SQL does
 *                        not match), or data exception (class 22)
 *   MICA_EPERM           insufficient privilege (42501)
 *   MICA_ETIMEOUT        statement cancelled (57014, statement_timeout)
 *   MICA_EDBCONN         server unreachable or connection lost
 *   MICA_ENOMEM          out of memory
 *   MICA_EDB             any other failure; see mica_db_sqlstate() */
MICA_WUR int mica_db_exec(mica_db *db, const char *sql, int nparams, const char *const *params,
			  PGresult **out);

/* Runs a trusted multi-statement SQL script with the simple query protocol
 * (PQexec), without parameters. Only for SQL files shipped with the program
 * (migrations): never pass text that contains any input. Returns as
 * mica_db_exec(); results are discarded. */
MICA_WUR int mica_db_exec_trusted_script(mica_db *db, const char *script);

/* Function run by mica_db_tx() inside the transaction. It returns 0 to commit
 * or a negative MICA_E* code to roll back; returning the code a mica_db_exec()
 * call gave it lets mica_db_tx() retry conflicts and lost connections. It may
 * run several times, so it must not have side effects outside the database
 * that are unsafe to repeat. */
typedef int (*mica_db_tx_fn)(mica_db *db, void *arg);

/* Runs fn(db, arg) inside BEGIN ISOLATION LEVEL |isolation| ... COMMIT.
 * Retries the whole transaction, up to MICA_DB_TX_MAX_ATTEMPTS times with a
 * small jittered backoff, on serialization failure, deadlock, and a
 * connection lost before COMMIT was sent. A connection lost while COMMIT was
 * in flight is not retried (its outcome is unknown): MICA_EDBCONN.
 * Called while a mica_db_tx() is already running on |db|, fn simply runs in
 * the outer transaction (whose retry loop covers it), provided |isolation| is
 * not stronger than the outer one's (else MICA_ESTATE).
 * Returns 0 after a successful COMMIT; fn's own error (after rollback);
 * MICA_ESERIALIZATION when attempts ran out; MICA_EDBCONN; MICA_EINVAL;
 * or the COMMIT's error. If fn returns 0 after ignoring a failed statement,
 * the transaction is rolled back and that statement's error returned. */
MICA_WUR int mica_db_tx(mica_db *db, enum mica_db_isolation isolation, mica_db_tx_fn fn, void *arg);

/* 1 if |db| is inside a transaction block (mica_db_tx() or an explicit BEGIN),
 * 0 otherwise (including when not connected). */
int mica_db_in_transaction(mica_db *db);

/* SQLSTATE of the last failed call on |db| ("" if it succeeded or failed
 * without one, e.g. connection lost). Borrowed; valid until the next call. */
const char *mica_db_sqlstate(const mica_db *db);

/* Human message of the last failure on |db| (server primary message or libpq
 * connection error). It may quote parameter values: show it to an operator
 * or return it to a trusted CLI user, never log it. Borrowed, as above.
 * With |db| NULL: why this thread's last failed mica_db_open() failed. */
const char *mica_db_errmsg(const mica_db *db);

/* Value at |row|, |col| of |res| as text, or NULL for SQL NULL or an
 * out-of-range position. Borrowed from |res|. */
const char *mica_db_get(const PGresult *res, int row, int col);

/* Parses the value at |row|, |col| as a decimal int64 into *out
 * (mica_parse_int64() rules). Returns 0, MICA_ENOTFOUND (NULL, or no such
 * row or column), MICA_EINVAL (not an integer) or MICA_ERANGE (beyond
 * int64). */
MICA_WUR int mica_db_get_int64(const PGresult *res, int row, int col, int64_t *out);

/* |conninfo| with password='|password|' appended in libpq's quoting (a copy
 * of |conninfo| when |password| is NULL or empty), for services that keep the
 * password in a secret file. malloc'd; the caller wipes and frees it. NULL
 * when out of memory. */
char *mica_db_conninfo_with_password(const char *conninfo, const char *password);

/* A PostgreSQL text[] literal of items[0..n) for a parameter ($1::text[]):
 * every element quoted, '"' and '\\' escaped, so any string (NULL, empty,
 * with commas or braces) is one element as written. malloc'd (caller
 * frees), NULL when out of memory. */
char *mica_db_text_array(const char *const *items, size_t n);

/* bytea travels as text in the hex format ("\\x0a1b..."). Encodes |len|
 * bytes of |data| as such a parameter value; malloc'd (caller frees), NULL
 * when out of memory. */
char *mica_db_bytea_encode(const void *data, size_t len);

/* Decodes the bytea value at |row|, |col| of |res| into *out (malloc'd,
 * caller frees; never NULL on success, even when empty) and *len. Returns 0,
 * MICA_ENOTFOUND (SQL NULL or out of range), MICA_EINVAL (not hex bytea
 * text) or MICA_ENOMEM. */
MICA_WUR int mica_db_get_bytea(const PGresult *res, int row, int col, uint8_t **out, size_t *len);

/* LISTEN on |channel| (letters, digits and '_' only, at most 63 bytes). The
 * subscription is re-issued automatically after a reconnect. Not allowed
 * inside a transaction (MICA_ESTATE). Returns as mica_db_exec(). */
MICA_WUR int mica_db_listen(mica_db *db, const char *channel);

/* Called for each notification drained: |channel| and |payload| are borrowed
 * and valid only during the call. */
typedef void (*mica_db_notify_fn)(const char *channel, const char *payload, void *arg);

/* The connection's socket, for an event loop to poll for readability, or -1
 * when not connected. It changes after a reconnect. */
int mica_db_socket(mica_db *db);

/* Reads what arrived on the socket without blocking and passes each queued
 * notification to |fn| (may be NULL). *count (may be NULL) receives how many
 * were drained. Returns 0 or MICA_EDBCONN if the connection was lost (it is
 * reset on the next call, and LISTENs re-issued). */
MICA_WUR int mica_db_drain_notifications(mica_db *db, mica_db_notify_fn fn, void *arg, int *count);

/* Waits up to |timeout_ms| (>= 0) for at least one notification and drains
 * them all to |fn| (may be NULL). Notifications sent while a connection was
 * down are lost, so after a reconnect it returns 0 at once as a "go and
 * look" wake-up with no notification drained. Returns 0, MICA_ETIMEOUT,
 * MICA_EDBCONN, MICA_ESTATE (inside a transaction) or MICA_EINVAL. */
MICA_WUR int mica_db_wait_notify(mica_db *db, int timeout_ms, mica_db_notify_fn fn, void *arg);

#endif
