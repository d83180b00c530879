//! `Mempool::from_memory`: a pktmbuf pool over caller-provided (here anonymous mmap)
//! memory; every mbuf's buffer lies inside that memory and within one 4 KiB page.
//! EAL can be initialised once per process, so this binary holds a single test.
use pmd::{Eal, Mbuf, Mempool};

const PAGE: usize = 4096;

#[test]
fn pool_over_caller_memory() {
    let prefix = format!("nbd-frommem-{}", std::process::id());
    let _eal = Eal::init(&[
        "--no-huge",
        "-m",
        "64",
        "--no-pci",
        "--no-shconf",
        "--iova-mode=va",
        "--file-prefix",
        &prefix,
        "--log-level",
        "lib.eal:error",
    ])
    .expect("EAL init");
    let len = 2048 * PAGE;
    // SAFETY: a fresh anonymous mapping, unmapped at the end after the pools are gone.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base.cast::<u8>();
    let (lo, hi) = (base as usize, base as usize + len);
    {
        // Too little memory for the count asked: an error, not a short pool.
        // SAFETY: the first 4 pages of our mapping, unused otherwise meanwhile.
        let small = unsafe { Mempool::from_memory("fm_small", 100, 0, 2176, base, 4 * PAGE, PAGE) };
        assert!(small.is_err(), "4 pages cannot hold 100 mbufs");
        // Misaligned memory is refused.
        // SAFETY: never populated (refused before use).
        let bad = unsafe { Mempool::from_memory("fm_bad", 1, 0, 2176, base.add(1), PAGE, PAGE) };
        assert!(bad.is_err());

        let n = 1500u32;
        // SAFETY: our mapping, used by nothing else, unmapped only after the pool is dropped.
        let pool = unsafe { Mempool::from_memory("fm_pool", n, 0, 2176, base, len, PAGE) }
            .expect("pool over anonymous memory");
        assert_eq!(pool.data_room(), 2176);
        assert_eq!(pool.available(), n);
        let mut all = Vec::new();
        while let Ok(m) = Mbuf::alloc(&pool) {
            all.push(m);
        }
        assert_eq!(all.len(), n as usize);
        for m in &mut all {
            let p = m.data_ptr() as usize;
            assert!(p >= lo && p < hi, "data {p:#x} outside {lo:#x}..{hi:#x}");
            // SAFETY: reading two fields of a valid mbuf.
            let (buf, blen) = unsafe {
                (
                    (*m.as_ptr()).buf_addr as usize,
                    (*m.as_ptr()).buf_len as usize,
                )
            };
            assert!(buf >= lo && buf + blen <= hi);
            assert_eq!(buf / PAGE, (buf + blen - 1) / PAGE, "buffer crosses a page");
            m.append(64).unwrap().fill(0xa5);
            assert_eq!(m.data(), &[0xa5; 64][..]);
        }
        drop(all);
        assert_eq!(pool.available(), n);
    }
    // SAFETY: the pools are gone; unmapping our own mapping.
    unsafe { libc::munmap(base.cast(), len) };
}
