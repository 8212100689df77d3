/* clock.c - the monotonic and wall clocks of libmica, each with an offset
 * tests set to move time without sleeping (see clock.h). */
#include "clock.h"

#include <stdatomic.h>
#include <time.h>

/* Added to both clocks / to the wall clock only. Relaxed: an offset is a
 * single value, and a reader racing a test's change sees the old or the
 * new one, either of which is a valid time. */
static _Atomic int64_t advance_ms;
static _Atomic int64_t wall_skew_ms;

static int64_t read_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mica_clock_ms(void)
{
	return read_ms(CLOCK_MONOTONIC) + atomic_load_explicit(&advance_ms, memory_order_relaxed);
}

int64_t mica_clock_now_ms(void)
{
	return read_ms(CLOCK_REALTIME) + atomic_load_explicit(&advance_ms, memory_order_relaxed) +
	       atomic_load_explicit(&wall_skew_ms, memory_order_relaxed);
}

int64_t mica_clock_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 +
	       1000 * (atomic_load_explicit(&advance_ms, memory_order_relaxed) +
		       atomic_load_explicit(&wall_skew_ms, memory_order_relaxed));
}

int64_t mica_clock_now(void)
{
	int64_t ms = mica_clock_now_ms();
	return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

void mica__clock_advance_ms(int64_t ms)
{
	if (ms > 0)
		atomic_fetch_add(&advance_ms, ms);
}

void mica__clock_skew_wall_ms(int64_t ms)
{
	atomic_fetch_add(&wall_skew_ms, ms);
}
