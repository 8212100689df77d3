/* mica-keycenter - the Key Center: HSM-rooted keys, an audited Transit/KMS-style
 * API over mutual TLS. The service is keycenter/service.c's kc_daemon;
 * lib/daemon.h runs it (`mica-keycenter --help`). */
#include "daemon.h"

#include "keycenter/keycenter.h"

int main(int argc, char **argv)
{
	return mica_daemon_main(argc, argv, &kc_daemon);
}
