#!/usr/bin/env python3
"""Round-by-round ratios of pktgen --json files: python3 pairs.py FILE.json...

Each point's netbackd round i ran right before vhost-user round i (A B A B), so their
ratio is the one least moved by the host's slow drifts; prints, per point and file, the
per-round ratios, their median, and netbackd's and vhost-user's per-round rates (Mpps)."""
import json, statistics, sys

def med(v):
    return statistics.median(v) if v else float('nan')

print("| file | dir | size | netbackd Mpps per round | vhost-user Mpps per round | ratio per round | median ratio | x memcpy |")
print("|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        if not r.get('vhost_rounds'):
            continue
        nb = [med(x['pps']) / 1e6 for x in r['rounds']]
        vh = [med(x) / 1e6 for x in r['vhost_rounds']]
        ratios = [a / b for a, b in zip(nb, vh) if b > 0]
        mc = r.get('ratio_vs_memcpy')
        print(f"| {path} | {r['dir']} | {r['size']} | {' '.join(f'{x:.1f}' for x in nb)} "
              f"| {' '.join(f'{x:.1f}' for x in vh)} | {' '.join(f'{x:.2f}' for x in ratios)} "
              f"| {med(ratios):.2f} | {'-' if mc is None else f'{mc:.2f}'} |")
