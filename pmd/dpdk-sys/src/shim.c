/* See shim.h. Compiled with the exact cflags of pkg-config libdpdk. */
#include "shim.h"
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>

uint16_t nbd_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t nbd_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_burst(port, queue, pkts, n); }
uint16_t nbd_eth_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_prepare(port, queue, pkts, n); }
struct rte_mbuf *nbd_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int nbd_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{ return rte_pktmbuf_alloc_bulk(mp, mbufs, count); }
void nbd_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void nbd_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }
char *nbd_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
char *nbd_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *nbd_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
int nbd_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
int nbd_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail) { return rte_pktmbuf_chain(head, tail); }
uint16_t nbd_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t nbd_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
void *nbd_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }
uint16_t nbd_pktmbuf_data_room_size(struct rte_mempool *mp) { return rte_pktmbuf_data_room_size(mp); }
int nbd_errno(void) { return rte_errno; }
unsigned nbd_lcore_id(void) { return rte_lcore_id(); }
unsigned nbd_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n, unsigned *free_space)
{ return rte_ring_enqueue_burst(r, objs, n, free_space); }
unsigned nbd_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n, unsigned *available)
{ return rte_ring_dequeue_burst(r, objs, n, available); }
unsigned nbd_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
uint16_t nbd_ipv4_cksum(const struct rte_ipv4_hdr *h) { return rte_ipv4_cksum(h); }
uint16_t nbd_ipv4_phdr_cksum(const struct rte_ipv4_hdr *h, uint64_t ol_flags)
{ return rte_ipv4_phdr_cksum(h, ol_flags); }
uint16_t nbd_ipv6_phdr_cksum(const struct rte_ipv6_hdr *h, uint64_t ol_flags)
{ return rte_ipv6_phdr_cksum(h, ol_flags); }
uint16_t nbd_ipv4_udptcp_cksum(const struct rte_ipv4_hdr *h, const void *l4)
{ return rte_ipv4_udptcp_cksum(h, l4); }
uint16_t nbd_ipv6_udptcp_cksum(const struct rte_ipv6_hdr *h, const void *l4)
{ return rte_ipv6_udptcp_cksum(h, l4); }
uint16_t nbd_ipv4_udptcp_cksum_mbuf(const struct rte_mbuf *m, const struct rte_ipv4_hdr *h, uint16_t l4_off)
{ return rte_ipv4_udptcp_cksum_mbuf(m, h, l4_off); }
uint16_t nbd_ipv6_udptcp_cksum_mbuf(const struct rte_mbuf *m, const struct rte_ipv6_hdr *h, uint16_t l4_off)
{ return rte_ipv6_udptcp_cksum_mbuf(m, h, l4_off); }
int nbd_vlan_strip(struct rte_mbuf *m) { return rte_vlan_strip(m); }
int nbd_vlan_insert(struct rte_mbuf **m) { return rte_vlan_insert(m); }
uint64_t nbd_get_tsc_cycles(void) { return rte_get_tsc_cycles(); }
uint64_t nbd_get_tsc_hz(void) { return rte_get_tsc_hz(); }
