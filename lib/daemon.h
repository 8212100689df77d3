/* daemon.h - the shutdown signals of every mica daemon.
 *
 * A daemon calls mica_daemon_block_signals() first thing in main(), before
 * any thread exists, so SIGINT and SIGTERM are blocked in every thread it
 * later starts (libmicrohttpd's, the audit writer, ...) and ignore SIGPIPE;
 * then, once it is serving, mica_daemon_wait_signal() waits for one of them
 * in the main thread. A signal can therefore never land in a worker thread
 * and be missed.
 */
#ifndef MICA_DAEMON_H
#define MICA_DAEMON_H

/* Blocks SIGINT and SIGTERM in the calling thread (and threads it starts
 * afterwards) and ignores SIGPIPE. */
void mica_daemon_block_signals(void);

/* Waits for SIGINT or SIGTERM; returns the signal number. */
int mica_daemon_wait_signal(void);

#endif
