//! The control ring (hash algorithm, flags, key, mapping table): batches of arbitrary
//! requests posted by a frontend and served by `HashState::serve`, with arbitrary grant
//! contents behind the key and mapping grefs, and hostile producer indices.
//!
//! Invariants: each published request is answered exactly once, in its slot order, with
//! its id and type echoed, and the answer is what a second state answering the same
//! requests one by one (`handle`) gives; a refused request leaves the state unchanged, a
//! successful SET bumps the generation once and a GET changes nothing; statuses are
//! netif.h's; the mapping never names a queue the vif lacks and steering never picks
//! one; an impossible producer index is refused without touching the state.
#![no_main]
use arbitrary::Arbitrary;
use dataplane::ctrl::HashState;
use dataplane::netif::{
    BackRing, CtrlRequest, CtrlRing, FrontRing, RingError, RingKind, SharedPage, PAGE_SIZE,
    XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
    XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use xen::iface::gntst;
use xen::{CopyDir, CopyOp, GrantCopy, XenError};

const DOMID: u16 = 5;

#[derive(Arbitrary, Debug)]
struct Req {
    id: u16,
    ty: u8,
    /// Keep the data small (lengths, offsets, queue numbers that mean something).
    small: bool,
    data: [u32; 3],
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Post these requests and serve them.
    Batch(Vec<Req>),
    /// Move the producer index by this much, then serve.
    EvilProd(u32),
    /// Steer a frame with the current state.
    Steer(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Script {
    num_queues: u8,
    /// Granted pages: (gref, contents from offset 0; the rest is zero).
    grants: Vec<(u8, Vec<u8>)>,
    steps: Vec<Step>,
}

/// Xen's checks for a copy from a guest page: the domain, a granted ref, the range.
#[derive(Clone)]
struct Grants(HashMap<u32, Vec<u8>>);

impl GrantCopy for Grants {
    unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        for op in ops.iter_mut() {
            op.status = match self.0.get(&op.gref) {
                _ if op.domid != DOMID => gntst::BAD_DOMAIN,
                None => gntst::BAD_GNTREF,
                Some(_) if op.dir != CopyDir::FromForeign => gntst::GENERAL_ERROR,
                Some(_) if usize::from(op.offset) + usize::from(op.len) > PAGE_SIZE => {
                    gntst::BAD_COPY_ARG
                }
                Some(page) => {
                    let (off, len) = (usize::from(op.offset), usize::from(op.len));
                    // SAFETY: `op.local` is valid for `len` writable bytes (the
                    // GrantCopy::copy contract); the source range is inside the page.
                    unsafe {
                        std::ptr::copy_nonoverlapping(page[off..off + len].as_ptr(), op.local, len)
                    };
                    gntst::OKAY
                }
            };
        }
        Ok(())
    }
}

fn request(r: &Req) -> CtrlRequest {
    let data = if r.small {
        r.data.map(|d| d % 160)
    } else {
        r.data
    };
    CtrlRequest {
        id: r.id,
        ty: u16::from(r.ty % 12),
        data,
    }
}

fn check_state(s: &HashState) {
    for (i, q) in s.mapping().iter().enumerate() {
        assert!(
            *q < s.num_queues(),
            "mapping[{i}] = {q} with {} queues",
            s.num_queues()
        );
    }
}

fuzz_target!(|sc: Script| {
    // A vif has 1..=8 queues (`multi-queue-max-queues`); it never exists with none.
    let nq = 1 + u32::from(sc.num_queues % 8);
    let mut pages = HashMap::new();
    for (gref, bytes) in &sc.grants {
        let mut p = vec![0u8; PAGE_SIZE];
        let n = bytes.len().min(PAGE_SIZE);
        p[..n].copy_from_slice(&bytes[..n]);
        pages.insert(u32::from(*gref), p);
    }
    let mut gc = Grants(pages);
    let mut model_gc = gc.clone();
    let mut state = HashState::new(DOMID, nq);
    let mut model = HashState::new(DOMID, nq);
    let page = SharedPage::new_owned();
    let mut front = FrontRing::<CtrlRing>::init(page.clone());
    let mut back = BackRing::<CtrlRing>::attach(page.clone());
    let size = <CtrlRing as RingKind>::SIZE;

    for step in sc.steps.iter().take(64) {
        match step {
            Step::Batch(reqs) => {
                let reqs: Vec<CtrlRequest> = reqs.iter().take(size as usize).map(request).collect();
                for r in &reqs {
                    front
                        .push_request(*r)
                        .expect("ring has room: every batch is reaped");
                }
                front.push_requests_and_check_notify();
                let served = state
                    .serve(&mut back, &mut gc)
                    .expect("honest indices refused");
                assert_eq!(
                    served.handled as usize,
                    reqs.len(),
                    "not every request answered"
                );
                assert!(!served.more);
                for r in &reqs {
                    let before = model.clone();
                    let want = model.handle(&mut model_gc, *r);
                    assert_eq!((want.id, want.ty), (r.id, r.ty), "id/type not echoed");
                    assert!(want.status <= 3, "status {}", want.status);
                    let get = matches!(
                        r.ty,
                        XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS
                            | XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE
                    );
                    if want.status != XEN_NETIF_CTRL_STATUS_SUCCESS {
                        assert_eq!(want.data, 0);
                        assert_eq!(model, before, "refused request changed the state");
                    } else if get {
                        assert_eq!(model, before, "a GET changed the state");
                    } else {
                        assert_eq!(model.generation(), before.generation() + 1);
                    }
                    let got = front
                        .next_response()
                        .expect("backend indices")
                        .expect("response missing");
                    assert_eq!(got, want, "served answer differs from handle for {r:?}");
                    check_state(&model);
                }
                assert_eq!(
                    front.next_response().expect("backend indices"),
                    None,
                    "extra response"
                );
                assert_eq!(state, model);
            }
            Step::EvilProd(delta) => {
                let before = state.clone();
                // SAFETY: offset 0 of the owned, page-aligned page is the 4-aligned
                // req_prod word, which the ring code only accesses atomically.
                let prod = unsafe { &*(page.as_ptr().add(0) as *const AtomicU32) };
                let old = prod.load(Ordering::Relaxed);
                let new = old.wrapping_add(*delta);
                let outstanding = new.wrapping_sub(back.req_cons());
                if outstanding == 0 {
                    continue;
                }
                prod.store(new, Ordering::Release);
                match state.serve(&mut back, &mut gc) {
                    Err(RingError::ImpossibleIndex { .. }) => {
                        assert!(outstanding > size, "possible index {outstanding} refused");
                        assert_eq!(state, before);
                    }
                    Ok(s) => {
                        assert!(outstanding <= size);
                        assert!(s.handled <= size);
                    }
                    Err(e) => panic!("serve: {e:?}"),
                }
                check_state(&state);
                // The frontend is broken now; the vif would be closed.
                return;
            }
            Step::Steer(frame) => {
                match state.queue_for(frame) {
                    Some(st) => assert!(st.queue < nq),
                    None => panic!("no queue with {nq} queues"),
                }
                if state.frame_hash(frame).is_some() {
                    assert!(state.queue_for(frame).is_some_and(|s| s.hash.is_some()));
                }
            }
        }
    }
});
