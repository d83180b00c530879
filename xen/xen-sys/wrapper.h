/* The interface version the 4.17 tools are built with: v1/v2 grant entries by name. */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
/* Everything netbackd uses from Xen: the stable tool libraries, the public I/O ABI, and
 * the Linux uapi ioctl structs of the /dev/xen devices. */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/io/ring.h>
#include <xen/io/netif.h>
#include <xen/io/xs_wire.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xenstore.h>
#include <xencall.h>
/* Linux uapi (linux-libc-dev), not Xen's older copies under xen/sys/. */
#include <xen/gntdev.h>
#include <xen/gntalloc.h>
#include <xen/evtchn.h>
#include <xen/privcmd.h>
