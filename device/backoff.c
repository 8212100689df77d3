/* backoff.c - the push client's reconnect delay: exponential backoff with
 * "full jitter" (a uniform draw between zero and the exponential ceiling),
 * so devices that lost one broker together do not come back together. */
#include "device/micadev.h"

uint64_t dev_backoff_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms, uint32_t rnd)
{
	/* base * 2^attempt, saturating at cap: shift at most until it passes
	 * cap (32 doublings take any non-zero base past UINT32_MAX). */
	uint64_t ceiling = base_ms;
	for (unsigned i = 0; i < attempt && ceiling < cap_ms; i++)
		ceiling <<= 1;
	if (ceiling > cap_ms)
		ceiling = cap_ms;
	/* rnd / UINT32_MAX of the ceiling, both ends included; ceiling is at
	 * most 2^32 - 1, so the product fits in 64 bits. */
	return ceiling * rnd / UINT32_MAX;
}
