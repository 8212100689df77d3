/* kv.h - Redis access for libmica: per-thread hiredis connections over a Unix
 * socket with ACL authentication, transparent reconnect after a Redis
 * restart, a binary-safe argv command helper, and the small helpers services
 * share (get/set/del with TTL, fixed-window rate limit, SET NX EX nonces).
 *
 * Commands are always sent as argv arrays (each argument length-delimited on
 * the wire); no command string is ever formatted from input. Key names and
 * values are never logged; failures log the command name and Redis's error.
 */
#ifndef MICA_KV_H
#define MICA_KV_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "err.h"

typedef struct mica_kv mica_kv;

/* Connection settings. All strings are copied by the functions that take a
 * config; the password copy is wiped when freed. */
struct mica_kv_config {
	const char *socket_path; /* Redis Unix socket (required) */
	const char *username;	 /* ACL user, or NULL for the default user */
	const char *password;	 /* NULL: no AUTH. Read it from a *_file setting. */
	int timeout_ms;		 /* connect and per-command timeout; 0 means 2000 */
};

/* Sets the process-wide settings used by mica_kv_thread() handles. Call once
 * at start-up. Returns 0, MICA_EINVAL, MICA_ESTATE (already initialised) or
 * MICA_ENOMEM. */
MICA_WUR int mica_kv_global_init(const struct mica_kv_config *cfg);

/* Forgets the settings (wiping the password) and closes the calling thread's
 * handle. Safe to call twice. */
void mica_kv_global_cleanup(void);

/* This thread's handle, created on first use (connecting on its first
 * command); closed when the thread exits. Do not mica_kv_close() it. Returns
 * NULL before mica_kv_global_init() or when out of memory (logged). */
mica_kv *mica_kv_thread(void);

/* Opens an explicit handle and connects now. *out is freed by
 * mica_kv_close(). Returns 0, MICA_EINVAL, MICA_ENOMEM, MICA_EKVCONN
 * (unreachable), or MICA_ECONFIG (Redis refused the username/password). */
MICA_WUR int mica_kv_open(mica_kv **out, const struct mica_kv_config *cfg);

/* Closes *kvp and sets it to NULL; safe on NULL and twice. Only clears *kvp
 * for a mica_kv_thread() handle. */
void mica_kv_close(mica_kv **kvp);

/* Sends one command given as |argc| arguments; argument i is argv[i] with
 * length argvlen[i] (binary-safe), or strlen(argv[i]) if |argvlen| is NULL.
 * On success *out (if |out| is non-NULL) is the reply, freed by the caller
 * with freeReplyObject(); error replies are not returned as replies.
 *
 * A connection found closed (Redis restarted) is re-opened before sending,
 * and a command that could not be written is retried once on a fresh
 * connection. A command whose reply was lost is not retried.
 *
 * Returns 0 or: MICA_EPERM (ACL NOPERM: key or command not allowed for this
 * user), MICA_EKV (other error reply; see mica_kv_errmsg()), MICA_EKVCONN,
 * MICA_ECONFIG (authentication refused on reconnect), MICA_EINVAL,
 * MICA_ENOMEM, MICA_EWOULDBLOCK (on an event thread, lib/thread.h: nothing
 * sent; also from mica_kv_open and every helper below). */
MICA_WUR int mica_kv_command(mica_kv *kv, redisReply **out, int argc, const char *const *argv,
			     const size_t *argvlen);

/* Message of the last failure on |kv| (Redis error reply or connection
 * error), "" after success. Borrowed; valid until the next call. */
const char *mica_kv_errmsg(const mica_kv *kv);

/* Stores |len| bytes of |val| at |key|; |ttl_seconds| > 0 sets an expiry,
 * 0 keeps none. Returns as mica_kv_command() (MICA_EINVAL if ttl < 0). */
MICA_WUR int mica_kv_set(mica_kv *kv, const char *key, const void *val, size_t len,
			 int ttl_seconds);

/* Reads |key|. On success *val is a malloc'd copy, NUL-terminated for
 * convenience, freed by the caller with free(); *len (may be NULL) its
 * length. Returns 0, MICA_ENOTFOUND, or as mica_kv_command(). */
MICA_WUR int mica_kv_get(mica_kv *kv, const char *key, char **val, size_t *len);

/* Deletes |key|; *deleted (may be NULL) is 1 if it existed, else 0. Returns as
 * mica_kv_command(). */
MICA_WUR int mica_kv_del(mica_kv *kv, const char *key, int *deleted);

/* Fixed-window rate limiter: counts one hit on |key| in the current window of
 * |window_seconds|, which starts at the first hit and ends when the key
 * expires (one Lua script, so INCR and EXPIRE are atomic). *allowed is 1 for
 * the first |limit| hits of a window and 0 after; *remaining (may be NULL)
 * is how many more hits this window allows. Refused hits also count. A burst
 * of up to 2 * limit is possible across a window boundary; that is the
 * accepted price of O(1) memory per key. Returns 0 (whether or not allowed),
 * MICA_EINVAL (limit < 1, window < 1, empty key), or as mica_kv_command(). */
MICA_WUR int mica_kv_rate_limit(mica_kv *kv, const char *key, long limit, int window_seconds,
				int *allowed, long *remaining);

/* Records the single use of a nonce: SET key 1 NX EX ttl_seconds. Returns 0
 * the first time, MICA_EREPLAY if |key| was already recorded within its TTL,
 * MICA_EINVAL (ttl < 1), or as mica_kv_command(). */
MICA_WUR int mica_kv_nonce(mica_kv *kv, const char *key, int ttl_seconds);

/* ---- internal, for lib/kvcache's dedicated connection ---------------------- */

/* As mica_kv_open(), but a Redis that cannot be reached (or drops the
 * connection during AUTH) is not logged: the caller retries with backoff
 * and logs once per outage. A refused username/password is still logged.
 * The handle is bound to the connection it opened: mica_kv_command() never
 * reconnects or retries on it, and fails with MICA_EKVCONN once that
 * connection is lost, so state set up on it (CLIENT TRACKING, SUBSCRIBE)
 * cannot silently go missing on a new one. */
MICA_WUR int mica__kv_open_quiet(mica_kv **out, const struct mica_kv_config *cfg);

/* The hiredis context of |kv| (borrowed; NULL when not connected). Valid
 * until the next mica_kv_command() or mica_kv_close() on |kv|; its |fd| and
 * |reader| may be used directly for a connection that only receives (pub/sub
 * after SUBSCRIBE), since mica_kv_command() would take a readable socket for
 * a closed one. */
redisContext *mica__kv_context(mica_kv *kv);

#endif
