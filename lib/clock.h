/* clock.h - the clocks libmica and the services read time from: a
 * monotonic clock for intervals (timeouts, cache ages, rate windows) and a
 * wall clock for timestamps that leave the process (expiry times, audit
 * records, captcha challenges).
 *
 * Every read of time in lib/ and the services goes through here (no
 * time(NULL), no clock_gettime(CLOCK_REALTIME) elsewhere; log line
 * timestamps are the one exception: they say when a line was really
 * written), so tests move time instead of sleeping: mica__clock_advance_ms()
 * makes a TTL pass at once. In production the offsets are 0 and both clocks
 * are the kernel's.
 */
#ifndef MICA_CLOCK_H
#define MICA_CLOCK_H

#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC (plus the test offset): never jumps with
 * wall-clock changes; only differences are meaningful. */
int64_t mica_clock_ms(void);

/* Wall-clock time (CLOCK_REALTIME plus the test offsets) in milliseconds
 * since the Unix epoch. */
int64_t mica_clock_now_ms(void);

/* Wall-clock time in microseconds since the Unix epoch (audit records). */
int64_t mica_clock_now_us(void);

/* Wall-clock time in whole seconds since the Unix epoch: the replacement
 * for time(NULL). */
int64_t mica_clock_now(void);

/* Test hooks; process-wide, thread-safe, and never called by a daemon.
 * mica__clock_advance_ms() moves both clocks forward by |ms| (>= 0), as if
 * that much time had passed; mica__clock_skew_wall_ms() moves only the
 * wall clock, by |ms| either way (a clock set wrong or stepped by NTP).
 * The monotonic clock never goes back, so there is no reset: Check runs each
 * test in its own process. */
void mica__clock_advance_ms(int64_t ms);
void mica__clock_skew_wall_ms(int64_t ms);

#endif
