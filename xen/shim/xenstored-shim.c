/*
 * LD_PRELOAD shim that lets Xen 4.17's real xenstored run without a hypervisor, for
 * netbackd's simulated host. It stands in for exactly what xenstored asks of Xen:
 *  - libxenctrl: xc_interface_open/close, xc_domain_getinfo (every domain exists, running);
 *  - libxenevtchn: a handle whose fd is a never-readable pipe (no hypervisor events),
 *    bind/notify/unmask/unbind succeed with made-up ports, pending returns none;
 *  - libxengnttab: open/close/set_max_grants succeed; mapping a domain's xenstore ring
 *    (at XS_INTRODUCE) gives a private zero page, so introduce/release work while sim
 *    guests talk to xenstored over its unix socket, never through a ring;
 *  - /proc/xen/xsd_port and /proc/xen/xsd_kva (dom0's store event channel and ring page),
 *    read at dom0 initialisation, are redirected to files under $NBD_SIM_XSD_DIR.
 * Clients and xenstored otherwise behave as on a real host: same protocol, permissions,
 * watches and transactions, over the unix socket in $XENSTORED_RUNDIR.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenctrl.h>

static int dummy_handle;

xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *dl, unsigned f)
{
    (void)l; (void)dl; (void)f;
    return (xc_interface *)&dummy_handle;
}

int xc_interface_close(xc_interface *x) { (void)x; return 0; }

int xc_domain_getinfo(xc_interface *x, uint32_t first, unsigned int max, xc_dominfo_t *info)
{
    (void)x;
    if (max == 0 || first >= 0x7FF0)
        return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first;
    info->running = 1;
    return 1;
}

/* --- event channels: nothing ever fires ------------------------------------------- */
struct evh { int fds[2]; };
static struct evh *ev_new(void)
{
    struct evh *h = calloc(1, sizeof(*h));
    if (h && pipe2(h->fds, O_CLOEXEC) != 0) { free(h); return NULL; }
    return h;
}
void *xenevtchn_open(void *logger, unsigned flags) { (void)logger; (void)flags; return ev_new(); }
void *xenevtchn_fdopen(void *logger, int fd, unsigned flags) { (void)logger; (void)fd; (void)flags; return ev_new(); }
int xenevtchn_close(void *h)
{
    struct evh *e = h;
    if (e) { close(e->fds[0]); close(e->fds[1]); free(e); }
    return 0;
}
int xenevtchn_fd(void *h) { return ((struct evh *)h)->fds[0]; }
static int next_port = 10;
int xenevtchn_bind_virq(void *h, unsigned virq) { (void)h; (void)virq; return next_port++; }
int xenevtchn_bind_interdomain(void *h, uint32_t dom, uint32_t port) { (void)h; (void)dom; (void)port; return next_port++; }
int xenevtchn_notify(void *h, uint32_t port) { (void)h; (void)port; return 0; }
int xenevtchn_pending(void *h) { (void)h; errno = EAGAIN; return -1; }
int xenevtchn_unmask(void *h, uint32_t port) { (void)h; (void)port; return 0; }
int xenevtchn_unbind(void *h, uint32_t port) { (void)h; (void)port; return 0; }

/* --- grant tables: each domain's xenstore ring is a private zero page ------------
 * XS_INTRODUCE maps the domain's ring (grant GNTTAB_RESERVED_XENSTORE). Sim guests talk to
 * xenstored over its unix socket, so the ring is a fresh anonymous page that nobody else
 * writes: xenstored sees an empty, connected ring forever. That is enough for introduce
 * (the domain becomes known, @introduceDomain fires) and release (@releaseDomain). */
void *xengnttab_open(void *logger, unsigned flags) { (void)logger; (void)flags; return &dummy_handle; }
int xengnttab_close(void *h) { (void)h; return 0; }
int xengnttab_set_max_grants(void *h, uint32_t n) { (void)h; (void)n; return 0; }
void *xengnttab_map_grant_ref(void *h, uint32_t dom, uint32_t ref, int prot)
{
    (void)h; (void)dom; (void)ref; (void)prot;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
int xengnttab_unmap(void *h, void *addr, uint32_t count)
{
    (void)h;
    return addr ? munmap(addr, (size_t)count * 4096) : 0;
}

/* --- /proc/xen/xsd_{port,kva} -> files under $NBD_SIM_XSD_DIR --------------------- */
static const char *redirect(const char *path, char *buf, size_t n)
{
    const char *dir = getenv("NBD_SIM_XSD_DIR");
    if (!dir || !path)
        return path;
    if (strcmp(path, "/proc/xen/xsd_port") == 0)
        snprintf(buf, n, "%s/xsd_port", dir);
    else if (strcmp(path, "/proc/xen/xsd_kva") == 0)
        snprintf(buf, n, "%s/xsd_kva", dir);
    else
        return path;
    return buf;
}

#define MODE_ARG(flags, mode) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    char buf[4096];
    static int (*real)(const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "open");
    return real(redirect(path, buf, sizeof buf), flags, mode);
}
int open64(const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    char buf[4096];
    static int (*real)(const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "open64");
    return real(redirect(path, buf, sizeof buf), flags, mode);
}
int openat(int dfd, const char *path, int flags, ...)
{
    MODE_ARG(flags, mode);
    char buf[4096];
    static int (*real)(int, const char *, int, ...);
    if (!real) real = dlsym(RTLD_NEXT, "openat");
    return real(dfd, redirect(path, buf, sizeof buf), flags, mode);
}
FILE *fopen(const char *path, const char *m)
{
    char buf[4096];
    static FILE *(*real)(const char *, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "fopen");
    return real(redirect(path, buf, sizeof buf), m);
}
FILE *fopen64(const char *path, const char *m)
{
    char buf[4096];
    static FILE *(*real)(const char *, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "fopen64");
    return real(redirect(path, buf, sizeof buf), m);
}
