/* Out-of-line wrappers for DPDK's static inline functions, which bindgen cannot link to.
 * Each nbd_X calls rte_X with the same arguments; see rte_*.h for semantics. */
#ifndef NBD_DPDK_SHIM_H
#define NBD_DPDK_SHIM_H
#include <stdint.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ip.h>
#include <rte_flow.h>

uint16_t nbd_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t nbd_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t nbd_eth_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *nbd_pktmbuf_alloc(struct rte_mempool *mp);
int nbd_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void nbd_pktmbuf_free(struct rte_mbuf *m);
void nbd_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
void nbd_pktmbuf_reset(struct rte_mbuf *m);
char *nbd_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *nbd_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *nbd_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int nbd_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
int nbd_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail);
uint16_t nbd_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t nbd_pktmbuf_tailroom(const struct rte_mbuf *m);
uint16_t nbd_pktmbuf_data_room_size(struct rte_mempool *mp);
int nbd_errno(void);
unsigned nbd_lcore_id(void);
unsigned nbd_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n, unsigned *free_space);
unsigned nbd_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n, unsigned *available);
unsigned nbd_ring_count(const struct rte_ring *r);
uint16_t nbd_ipv4_cksum(const struct rte_ipv4_hdr *h);
uint16_t nbd_ipv4_phdr_cksum(const struct rte_ipv4_hdr *h, uint64_t ol_flags);
uint16_t nbd_ipv6_phdr_cksum(const struct rte_ipv6_hdr *h, uint64_t ol_flags);
uint16_t nbd_ipv4_udptcp_cksum(const struct rte_ipv4_hdr *h, const void *l4);
uint16_t nbd_ipv6_udptcp_cksum(const struct rte_ipv6_hdr *h, const void *l4);
uint16_t nbd_ipv4_udptcp_cksum_mbuf(const struct rte_mbuf *m, const struct rte_ipv4_hdr *h, uint16_t l4_off);
uint16_t nbd_ipv6_udptcp_cksum_mbuf(const struct rte_mbuf *m, const struct rte_ipv6_hdr *h, uint16_t l4_off);
int nbd_vlan_strip(struct rte_mbuf *m);
int nbd_vlan_insert(struct rte_mbuf **m);
/* Not a wrapper: an rte_flow rule sending ingress frames whose destination MAC is `mac` (and,
 * when vlan >= 0, whose VLAN ID is `vlan`) to RX queue `queue`, validated first. NULL when the
 * port refuses: *code is the negative errno, *msg DPDK's static message or NULL. */
struct rte_flow *nbd_flow_mac_to_queue(uint16_t port, const uint8_t *mac, int vlan,
                                       uint16_t queue, int *code, const char **msg);
int nbd_flow_destroy(uint16_t port, struct rte_flow *flow);
uint64_t nbd_get_tsc_cycles(void);
uint64_t nbd_get_tsc_hz(void);

/* DPDK builds these from RTE_BIT64(), a function-like macro bindgen cannot evaluate; an
 * enum makes clang compute them from the headers. */
enum nbd_eth_offload {
    NBD_TX_OFFLOAD_VLAN_INSERT = RTE_ETH_TX_OFFLOAD_VLAN_INSERT,
    NBD_TX_OFFLOAD_IPV4_CKSUM = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM,
    NBD_TX_OFFLOAD_UDP_CKSUM = RTE_ETH_TX_OFFLOAD_UDP_CKSUM,
    NBD_TX_OFFLOAD_TCP_CKSUM = RTE_ETH_TX_OFFLOAD_TCP_CKSUM,
    NBD_TX_OFFLOAD_TCP_TSO = RTE_ETH_TX_OFFLOAD_TCP_TSO,
    NBD_TX_OFFLOAD_MULTI_SEGS = RTE_ETH_TX_OFFLOAD_MULTI_SEGS,
    NBD_TX_OFFLOAD_MBUF_FAST_FREE = RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE,
    NBD_RX_OFFLOAD_VLAN_STRIP = RTE_ETH_RX_OFFLOAD_VLAN_STRIP,
    NBD_RX_OFFLOAD_IPV4_CKSUM = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
    NBD_RX_OFFLOAD_UDP_CKSUM = RTE_ETH_RX_OFFLOAD_UDP_CKSUM,
    NBD_RX_OFFLOAD_TCP_CKSUM = RTE_ETH_RX_OFFLOAD_TCP_CKSUM,
    NBD_RX_OFFLOAD_SCATTER = RTE_ETH_RX_OFFLOAD_SCATTER,
    NBD_RSS_IPV4 = RTE_ETH_RSS_IPV4,
    NBD_RSS_NONFRAG_IPV4_TCP = RTE_ETH_RSS_NONFRAG_IPV4_TCP,
    NBD_RSS_NONFRAG_IPV4_UDP = RTE_ETH_RSS_NONFRAG_IPV4_UDP,
    NBD_RSS_IPV6 = RTE_ETH_RSS_IPV6,
    NBD_RSS_NONFRAG_IPV6_TCP = RTE_ETH_RSS_NONFRAG_IPV6_TCP,
    NBD_RSS_NONFRAG_IPV6_UDP = RTE_ETH_RSS_NONFRAG_IPV6_UDP,
};
#endif
