/* thread.c - the per-thread event-thread mark (see thread.h). */
#include "thread.h"

static __thread bool event_thread;

void mica_thread_set_event(bool on)
{
	event_thread = on;
}

bool mica_thread_is_event(void)
{
	return event_thread;
}

bool mica_thread_may_block(void)
{
	return !event_thread;
}
