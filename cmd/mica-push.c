/* mica-push - the push service: device registration, developer apps,
 * aliases and topics. The service is mipush/service.c's push_daemon;
 * lib/daemon.h runs it (`mica-push --help`). */
#include "daemon.h"

#include "mipush/push.h"

int main(int argc, char **argv)
{
	return mica_daemon_main(argc, argv, &push_daemon);
}
