/* err.c - string and status tables for the libmica error enum, generated
 * from MICA_ERRNO_MAP so codes, messages and HTTP statuses cannot drift from
 * the enum. */
#include "err.h"

#define IDX(e) ((e)-MICA__ERR_BASE - 1)

static const char *const codes[] = {
#define X(name, status, code, msg) code,
	MICA_ERRNO_MAP(X)
#undef X
};

static const char *const msgs[] = {
#define X(name, status, code, msg) msg,
	MICA_ERRNO_MAP(X)
#undef X
};

const char *mica_strerror(int err)
{
	if (err == 0)
		return "ok";
	if (err <= MICA__ERR_BASE || err >= MICA__ERR_END)
		return "unknown_error";
	return codes[IDX(err)];
}

const char *mica_errmsg(int err)
{
	if (err == 0)
		return "success";
	if (err <= MICA__ERR_BASE || err >= MICA__ERR_END)
		return "unknown error";
	return msgs[IDX(err)];
}

static const short statuses[] = {
#define X(name, status, code, msg) status,
	MICA_ERRNO_MAP(X)
#undef X
};

int mica_http_status(int err)
{
	if (err == 0)
		return 200;
	if (err <= MICA__ERR_BASE || err >= MICA__ERR_END)
		return 500;
	return statuses[IDX(err)];
}
