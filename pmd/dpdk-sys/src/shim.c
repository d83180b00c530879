/* See shim.h. Compiled with the exact cflags of pkg-config libdpdk. */
#include "shim.h"
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <string.h>

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
void nbd_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count)
{
	/* One-segment direct mbufs of one pool, each referenced once (what a port's RX
	 * burst hands out): back to the pool with one put, reading only their first cache
	 * lines (a NIC PMD's fast free). Anything else goes through rte_pktmbuf_free_bulk,
	 * which handles chains, clones and external buffers. */
	struct rte_mempool *mp;
	unsigned i;
	if (count == 0)
		return;
	mp = mbufs[0]->pool;
	for (i = 0; i < count; i++) {
		const struct rte_mbuf *m = mbufs[i];
		if (m->pool != mp || m->nb_segs != 1 || !RTE_MBUF_DIRECT(m) ||
		    rte_mbuf_refcnt_read(m) != 1) {
			rte_pktmbuf_free_bulk(mbufs, count);
			return;
		}
	}
	rte_mempool_put_bulk(mp, (void **)mbufs, count);
}
void nbd_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }
char *nbd_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
char *nbd_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *nbd_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
int nbd_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
int nbd_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail) { return rte_pktmbuf_chain(head, tail); }
uint16_t nbd_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t nbd_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
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

struct rte_flow *nbd_flow_mac_to_queue(uint16_t port, const uint8_t *mac, int vlan,
                                       uint16_t queue, int *code, const char **msg)
{
    struct rte_flow_attr attr;
    struct rte_flow_item_eth eth_spec, eth_mask;
    struct rte_flow_item_vlan vlan_spec, vlan_mask;
    struct rte_flow_item pattern[3];
    struct rte_flow_action_queue q;
    struct rte_flow_action actions[2];
    struct rte_flow_error err;
    struct rte_flow *f;
    int n = 1, ret;

    memset(&attr, 0, sizeof(attr));
    attr.ingress = 1;
    memset(&eth_spec, 0, sizeof(eth_spec));
    memset(&eth_mask, 0, sizeof(eth_mask));
    memcpy(eth_spec.dst.addr_bytes, mac, RTE_ETHER_ADDR_LEN);
    memset(eth_mask.dst.addr_bytes, 0xff, RTE_ETHER_ADDR_LEN);
    memset(pattern, 0, sizeof(pattern));
    pattern[0].type = RTE_FLOW_ITEM_TYPE_ETH;
    pattern[0].spec = &eth_spec;
    pattern[0].mask = &eth_mask;
    if (vlan >= 0) {
        memset(&vlan_spec, 0, sizeof(vlan_spec));
        memset(&vlan_mask, 0, sizeof(vlan_mask));
        vlan_spec.tci = rte_cpu_to_be_16((uint16_t)(vlan & 0x0fff));
        vlan_mask.tci = rte_cpu_to_be_16(0x0fff);
        pattern[1].type = RTE_FLOW_ITEM_TYPE_VLAN;
        pattern[1].spec = &vlan_spec;
        pattern[1].mask = &vlan_mask;
        n = 2;
    }
    pattern[n].type = RTE_FLOW_ITEM_TYPE_END;
    memset(&q, 0, sizeof(q));
    q.index = queue;
    memset(actions, 0, sizeof(actions));
    actions[0].type = RTE_FLOW_ACTION_TYPE_QUEUE;
    actions[0].conf = &q;
    actions[1].type = RTE_FLOW_ACTION_TYPE_END;
    memset(&err, 0, sizeof(err));
    *code = 0;
    *msg = NULL;
    ret = rte_flow_validate(port, &attr, pattern, actions, &err);
    if (ret != 0) {
        *code = ret;
        *msg = err.message;
        return NULL;
    }
    f = rte_flow_create(port, &attr, pattern, actions, &err);
    if (f == NULL) {
        *code = -rte_errno;
        *msg = err.message;
    }
    return f;
}

int nbd_flow_destroy(uint16_t port, struct rte_flow *flow)
{
    struct rte_flow_error err;
    memset(&err, 0, sizeof(err));
    return rte_flow_destroy(port, flow, &err);
}
