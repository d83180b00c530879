import subprocess, sys, re
# usage: breakdown.py perf.data comm busy_cycles_per_pkt title
data, comm, cyc, title = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
out = subprocess.run(['perf','report','-i',data,'--no-children','-g','none','--comm',comm,'--sort','dso,sym','--percent-limit','0'],capture_output=True,text=True).stdout
cats = [
 ('ring and engine loop (inlined in poll)', r'Group<G,E>::poll|Local::flush|MbufCache::get|drain::Drain|counters::'),
 ('grant copy (sim: entry check + memcpy)', r'SimGrant|DomainTable|DomainMem|memmove|memcpy'),
 ('switch (lookup, cache, flood list, egress)', r'switch::|switch_frame|deliver|enqueue_backlog|apply_egress'),
 ('guest TX build (mbuf chain, copy ops)', r'build_tx|segment_ptrs'),
 ('guest TX parse (txparse) + credit', r'txparse|credit::'),
 ('offload (csum/GSO setup)', r'offload::'),
 ('RX planning (rxplan)', r'rxplan'),
 ('GRO candidate check (gro::maybe_tcp)', r'gro::'),
 ('mbuf alloc/free (DPDK mempool)', r'pktmbuf|mempool|nbd_pktmbuf'),
 ('port bursts (net_null)', r'librte_net_null|eth_rx_burst|eth_tx_burst|tx_burst|rx_burst'),
 ('kernel (timer ticks, page faults)', r'\[kernel'),
]
tot = {}
total = 0.0
for l in out.splitlines():
    m = re.match(r'\s+([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)', l)
    if not m: continue
    p = float(m.group(1)); dso=m.group(2); kind=m.group(3); sym=m.group(4)
    total += p
    key = 'other (unresolved, libc)'
    s = ('[kernel' if kind=='k' else '') + dso + ' ' + sym
    for name, pat in cats:
        if re.search(pat, s):
            key = name; break
    tot[key] = tot.get(key,0)+p
print(f"{title}: {cyc:.0f} busy cycles/packet")
for k,v in sorted(tot.items(), key=lambda x:-x[1]):
    share = v/total
    print(f"   {share*100:5.1f}%  ~ {share*cyc:4.0f}  {k}")
