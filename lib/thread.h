/* thread.h - the event-loop contract of libmica: which threads may block.
 *
 * An event thread runs many connections at once (libmicrohttpd's epoll
 * threads today, a libuv loop tomorrow); one call that waits on the network
 * stalls every connection it serves. So a thread can be marked as an event
 * thread, and then every libmica call that may wait on another process
 * refuses at its entry, before it touches a socket, with MICA_EWOULDBLOCK
 * instead of silently stalling the loop:
 *   lib/db    mica_db_open, mica_db_exec, mica_db_exec_trusted_script,
 *             mica_db_tx, mica_db_listen, mica_db_wait_notify
 *             (and so every lib/outbox call, which runs on them)
 *   lib/kv    mica_kv_open, mica_kv_command and the helpers on it
 *   lib/httpc mica_httpc_request, mica_httpc_json
 *   lib/kc    every call that must ask the Key Center (a cache hit of
 *             mica_kc_decrypt_datakey or mica_kc_hmac still answers)
 *   lib/auth  mica_auth_validate when the in-process cache cannot answer
 * What a caller on an event thread does with MICA_EWOULDBLOCK is move the
 * work to a thread that may block (lib/http: mica_http_run_blocking()).
 *
 * lib/http marks its event threads itself; an event loop a service runs
 * marks its loop thread with mica_thread_set_event(true) before it enters
 * the loop. Nothing blocks waiting on an in-process lock held across I/O
 * either, by the same rule: code that holds a lock across a blocking call
 * must not take that lock on an event thread.
 */
#ifndef MICA_THREAD_H
#define MICA_THREAD_H

#include <stdbool.h>

#include "err.h"

/* Marks (|on| true) or unmarks the calling thread as an event thread. The
 * mark is per thread and stays until changed. */
void mica_thread_set_event(bool on);

/* Whether the calling thread is marked as an event thread. */
bool mica_thread_is_event(void);

/* Whether the calling thread may block: the opposite of
 * mica_thread_is_event(). */
bool mica_thread_may_block(void);

/* The one-line guard at the entry of a blocking libmica function that
 * returns an int error code. */
#define MICA_BLOCKING_ENTRY()                                                                      \
	do {                                                                                       \
		if (mica_thread_is_event())                                                        \
			return MICA_EWOULDBLOCK;                                                   \
	} while (0)

#endif
