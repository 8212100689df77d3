/* mica-account - the account service: registration, risk-based login,
 * sessions, security settings. The service is account/service.c's
 * acct_daemon; lib/daemon.h runs it (`mica-account --help`). */
#include "daemon.h"

#include "account/account.h"

int main(int argc, char **argv)
{
	return mica_daemon_main(argc, argv, &acct_daemon);
}
