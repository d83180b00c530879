//! Guest RX buffer planning over arbitrary segment lists (an mbuf chain's lengths).
//!
//! Invariants: the chunks cover every segment exactly once, in order and contiguously;
//! a chunk never leaves its 4 KiB buffer; buffers fill in order without gaps or overlap
//! and none is left empty; the returned count is the number of buffers used and equals
//! `buffers_needed` (the dry run before any slot is consumed, XSA-392) and
//! `slots_needed` minus the GSO slot; the one-segment shortcut equals the walk.
#![no_main]
use dataplane::rxplan::{buffers_needed, plan, single, slots_needed, Chunk, BUFFER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Segment lengths up to 16 KiB (mbuf segments are at most 64 KiB; larger ones only
    // make the input longer), at most 64 segments.
    let segs: Vec<u32> = data
        .chunks_exact(2)
        .take(64)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) & 0x3FFF)
        .collect();
    let mut chunks: Vec<Chunk> = Vec::new();
    let n = plan(segs.iter().copied(), |c| chunks.push(c));
    assert_eq!(n, buffers_needed(segs.iter().copied()));
    assert_eq!(n + 1, slots_needed(segs.iter().copied(), true));
    assert_eq!(n, slots_needed(segs.iter().copied(), false));

    let total: u64 = segs.iter().map(|&l| u64::from(l)).sum();
    let covered: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    assert_eq!(covered, total);
    assert_eq!(n == 0, total == 0);

    // Segment coverage: for each segment, its chunks are contiguous from 0 to its length.
    let mut seg_pos = vec![0u32; segs.len()];
    let mut last_seg = 0usize;
    // Buffer fill: chunks of a buffer are contiguous from offset 0.
    let mut buf_fill: Vec<u32> = Vec::new();
    for c in &chunks {
        assert!(c.len > 0, "empty chunk {c:?}");
        let seg = usize::from(c.seg);
        assert!(
            seg < segs.len() && seg >= last_seg,
            "chunk out of segment order {c:?}"
        );
        last_seg = seg;
        assert_eq!(c.seg_off, seg_pos[seg], "gap or overlap in segment {seg}");
        seg_pos[seg] += u32::from(c.len);
        assert!(seg_pos[seg] <= segs[seg]);
        let buf = usize::from(c.buf);
        assert!(
            buf == buf_fill.len() || buf + 1 == buf_fill.len(),
            "buffer skipped {c:?}"
        );
        if buf == buf_fill.len() {
            buf_fill.push(0);
        }
        assert_eq!(
            u32::from(c.buf_off),
            buf_fill[buf],
            "gap or overlap in buffer {buf}"
        );
        buf_fill[buf] += u32::from(c.len);
        assert!(buf_fill[buf] <= BUFFER_SIZE, "chunk past its buffer {c:?}");
    }
    assert_eq!(seg_pos, segs);
    assert_eq!(buf_fill.len() as u32, n);

    // The shortcut.
    if let [len] = segs[..] {
        match single(len) {
            Some(c) => assert_eq!(chunks, [c]),
            None => assert!(len == 0 || len > BUFFER_SIZE),
        }
    }
});
