/* daemon.c - shutdown signals for daemons (see daemon.h): blocked everywhere,
 * awaited with sigwait() in the main thread. */
#include "daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>

static void stop_set(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
}

void mica_daemon_block_signals(void)
{
	sigset_t set;
	stop_set(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int mica_daemon_wait_signal(void)
{
	sigset_t set;
	int sig = 0;
	stop_set(&set);
	while (sigwait(&set, &sig) != 0)
		;
	return sig;
}
