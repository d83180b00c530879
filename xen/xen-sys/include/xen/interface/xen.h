/* Linux's uapi <xen/privcmd.h> includes the kernel-internal <xen/interface/xen.h> for
 * xen_pfn_t and domid_t. In userspace the Xen public header provides both. */
#include <xen/xen.h>
