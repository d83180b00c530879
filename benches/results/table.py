#!/usr/bin/env python3
"""Markdown table of a pktgen --json file: python3 table.py FILE.json"""
import json, sys

rows = json.load(open(sys.argv[1]))
def f(v, p=2):
    return '-' if v is None else f"{v:.{p}f}"
print("| dir | size | vifs | Mpps (min-max) | Gbit/s | busy cycles/pkt | idle time | vhost-user Mpps | x vhost | memcpy Mpps | x memcpy |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['dir']} | {r['size']} | {r['vifs']} | {r['mpps']:.2f} ({r['mpps_min']:.2f}-{r['mpps_max']:.2f}) "
          f"| {r['gbps']:.1f} | {r['busy_cycles_per_packet']:.0f} | {100*r['idle_time_share']:.1f}% "
          f"| {f(r['vhost_mpps'])} | {f(r['ratio_vs_vhost_user'])} | {f(r['memcpy_mpps'],1)} | {f(r['ratio_vs_memcpy'])} |")
