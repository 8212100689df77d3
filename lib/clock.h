/* clock.h - the one monotonic clock libmica and the services measure
 * intervals with (timeouts, cache ages, rate windows). */
#ifndef MICA_CLOCK_H
#define MICA_CLOCK_H

#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC: never jumps with wall-clock changes; only
 * differences are meaningful. */
int64_t mica_clock_ms(void);

#endif
