/* mica-cloudsync - the cloud sync service: records of every module, sync
 * tokens, conflict records, the recycle bin. The service is
 * cloudsync/service.c's cloudsync_daemon; lib/daemon.h runs it
 * (`mica-cloudsync --help`). */
#include "daemon.h"

#include "cloudsync/cloudsync.h"

int main(int argc, char **argv)
{
	return mica_daemon_main(argc, argv, &cloudsync_daemon);
}
