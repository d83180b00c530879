//! Guest RX: how a packet's bytes are laid into the guest's receive buffers.
//!
//! The seed's buffer-filling rules (`start_new_rx_buffer`, `netbk_gop_frag_copy`), over the
//! packet's mbuf segments instead of skb frags: fill a 4 KiB guest buffer until full; start
//! a new one early only when the next chunk would overflow the current buffer, fits whole in
//! a fresh one, the current one has data, and it is not the head (netfront needs data in
//! the first buffer). Small segments are so linearised and large ones not split needlessly.
//!
//! The same walk both counts the buffers (before any request is consumed: a packet is only
//! started when all its slots are posted, XSA-392) and emits the copy chunks, so the two
//! can never disagree.

/// Bytes a guest RX buffer holds (one granted page).
pub const BUFFER_SIZE: u32 = 4096;

/// One grant-copy chunk: `len` bytes from segment `seg` at `seg_off` into data buffer
/// `buf` (0-based among the packet's data buffers) at `buf_off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seg: u16,
    pub seg_off: u32,
    pub buf: u16,
    pub buf_off: u16,
    pub len: u16,
}

fn start_new_buffer(offset: u32, size: u32, head: bool) -> bool {
    if offset == BUFFER_SIZE {
        return true;
    }
    offset + size > BUFFER_SIZE && size <= BUFFER_SIZE && offset != 0 && !head
}

/// Walks the packet given by its segment lengths, calling `emit` for every chunk; returns
/// the number of data buffers used (0 for an empty packet). Zero-length segments are
/// skipped.
pub fn plan(seg_lens: impl IntoIterator<Item = u32>, mut emit: impl FnMut(Chunk)) -> u32 {
    let mut buf: u32 = 0;
    let mut off: u32 = 0;
    let mut head = true;
    let mut started = false;
    for (seg, len) in seg_lens.into_iter().enumerate() {
        let mut seg_off = 0u32;
        let mut size = len;
        while size > 0 {
            if !started {
                started = true;
            } else if start_new_buffer(off, size, head) {
                buf += 1;
                off = 0;
            }
            let bytes = size.min(BUFFER_SIZE - off);
            emit(Chunk {
                seg: seg as u16,
                seg_off,
                buf: buf as u16,
                buf_off: off as u16,
                len: bytes as u16,
            });
            off += bytes;
            seg_off += bytes;
            size -= bytes;
            head = false;
        }
    }
    if started {
        buf + 1
    } else {
        0
    }
}

/// The plan of a packet in one segment that fits one buffer (most packets): its one
/// chunk, without the walk; None when the general walk is needed. Equal to `plan` on
/// `[len]` by construction (checked for every length in the tests).
#[inline]
pub fn single(len: u32) -> Option<Chunk> {
    (1..=BUFFER_SIZE).contains(&len).then_some(Chunk {
        seg: 0,
        seg_off: 0,
        buf: 0,
        buf_off: 0,
        len: len as u16,
    })
}

/// The length of `single`'s one chunk (its offsets and indices are 0): the engine's fast
/// path keeps this scalar rather than the struct, which, built field by field on the stack
/// and read back wider, stalled on store forwarding once per packet.
#[inline]
pub fn single_len(len: u32) -> Option<u16> {
    single(len).map(|c| c.len)
}

/// Data buffers the packet needs (the dry run of `plan`).
pub fn buffers_needed(seg_lens: impl IntoIterator<Item = u32>) -> u32 {
    plan(seg_lens, |_| {})
}

/// Ring slots the packet needs: its data buffers plus one for the GSO extra (or the GSO
/// prefix slot), as the frontend posted one request per slot.
pub fn slots_needed(seg_lens: impl IntoIterator<Item = u32>, gso: bool) -> u32 {
    buffers_needed(seg_lens) + u32::from(gso)
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_segment_shortcut_equals_the_walk() {
        for len in 0..=2 * BUFFER_SIZE + 3 {
            let mut chunks = Vec::new();
            let n = plan([len], |c| chunks.push(c));
            match single(len) {
                Some(c) => {
                    assert_eq!((n, chunks), (1, vec![c]), "len {len}");
                    // The engine's fast path copies `single_len` bytes to the buffer's start.
                    assert_eq!((c.seg, c.seg_off, c.buf, c.buf_off), (0, 0, 0, 0));
                    assert_eq!(single_len(len), Some(c.len));
                }
                None => {
                    assert!(n != 1 || chunks.len() != 1, "len {len} has one chunk");
                    assert_eq!(single_len(len), None);
                }
            }
        }
    }

    use super::*;

    fn chunks(segs: &[u32]) -> (u32, Vec<Chunk>) {
        let mut v = Vec::new();
        let n = plan(segs.iter().copied(), |c| v.push(c));
        (n, v)
    }

    #[test]
    fn small_packet_one_buffer() {
        let (n, c) = chunks(&[60]);
        assert_eq!(n, 1);
        assert_eq!(
            c,
            vec![Chunk {
                seg: 0,
                seg_off: 0,
                buf: 0,
                buf_off: 0,
                len: 60
            }]
        );
        assert_eq!(buffers_needed([0u32; 0]), 0);
        assert_eq!(buffers_needed([0u32, 0]), 0);
    }

    #[test]
    fn head_fills_before_splitting() {
        // Head segment larger than a buffer: split at 4096.
        let (n, c) = chunks(&[5000]);
        assert_eq!(n, 2);
        assert_eq!(
            (c[0].len, c[1].buf, c[1].buf_off, c[1].len),
            (4096, 1, 0, 904)
        );
        assert_eq!(c[1].seg_off, 4096);
    }

    #[test]
    fn small_frags_are_linearised_large_ones_get_own_buffer() {
        // 100 + 3000 fit together.
        assert_eq!(chunks(&[100, 3000]).0, 1);
        // 100 + 4000: the second would overflow and fits whole in a new buffer.
        let (n, c) = chunks(&[100, 4000]);
        assert_eq!(n, 2);
        assert_eq!((c[1].buf, c[1].buf_off, c[1].len), (1, 0, 4000));
        // A frag larger than a buffer is split rather than moved.
        let (n, c) = chunks(&[100, 5000]);
        assert_eq!(n, 2);
        assert_eq!(
            c.iter().map(|c| (c.buf, c.len)).collect::<Vec<_>>(),
            vec![(0, 100), (0, 3996), (1, 1004)]
        );
    }

    #[test]
    fn gso_64k_in_2k_segments() {
        let segs = [2048u32; 32];
        assert_eq!(buffers_needed(segs.iter().copied()), 16);
        assert_eq!(slots_needed(segs.iter().copied(), true), 17);
    }

    /// Chunks cover every byte exactly once, in order, never cross a buffer, and the
    /// count matches the dry run; the head buffer is never empty.
    #[test]
    fn chunks_cover_packet() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let n = (rnd() % 20) as usize;
            let segs: Vec<u32> = (0..n).map(|_| (rnd() % 9000) as u32).collect();
            let (bufs, c) = chunks(&segs);
            let total: u32 = segs.iter().sum();
            assert_eq!(c.iter().map(|c| u32::from(c.len)).sum::<u32>(), total);
            assert_eq!(bufs, buffers_needed(segs.iter().copied()));
            let mut expect_seg = 0usize;
            let mut expect_off = 0u32;
            let mut last_buf_end = (0u16, 0u32);
            for ch in &c {
                while segs[expect_seg] == expect_off {
                    expect_seg += 1;
                    expect_off = 0;
                }
                assert_eq!((ch.seg as usize, ch.seg_off), (expect_seg, expect_off));
                expect_off += u32::from(ch.len);
                assert!(u32::from(ch.buf_off) + u32::from(ch.len) <= BUFFER_SIZE);
                assert!(ch.len > 0);
                // Buffers are filled contiguously in order.
                if ch.buf == last_buf_end.0 {
                    assert_eq!(u32::from(ch.buf_off), last_buf_end.1);
                } else {
                    assert_eq!((ch.buf, ch.buf_off), (last_buf_end.0 + 1, 0));
                }
                last_buf_end = (ch.buf, u32::from(ch.buf_off) + u32::from(ch.len));
            }
            if total > 0 {
                assert_eq!(u32::from(c.last().unwrap().buf) + 1, bufs);
                // Never more buffers than a page-packed layout plus one per segment.
                assert!(bufs <= total.div_ceil(BUFFER_SIZE) + n as u32);
            }
        }
    }
}
