//! The shared-ring views driven by a script that interleaves a frontend's writes with the
//! backend's reads (the producer racing the consumer, one step at a time), from an
//! arbitrary starting index so that the indices wrap. The frontend is honest until the
//! script writes an index or rewrites a published slot behind the ring API's back.
//!
//! Invariants, always: every request the backend copies is what the slot held at that
//! moment and comes from an index it has not read before; the backend never holds more
//! consumed-but-unanswered requests than the ring has slots, writes each response into
//! the slot of the oldest unanswered request (never outside the ring), and a checked batch
//! never offers more than a ring; an impossible producer index is refused only when it is
//! impossible. While the frontend is honest: the backend reads only published slots, in
//! order, and every published request is answered exactly once, in order, with its id.
#![no_main]
use arbitrary::Arbitrary;
use dataplane::netif::{BackRing, FrontRing, RingError, RingKind, SharedPage, TxRing};
use dataplane::netif::{TxRequest, TxResponse, RING_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Frontend: write up to n requests (not yet visible).
    Push(u8),
    /// Frontend: publish the written requests.
    Publish,
    /// Backend: snapshot the producer.
    Batch,
    /// Backend: consume up to n requests of the snapshot.
    Consume(u8),
    /// Backend: consume up to n requests against the live producer.
    ConsumeLive(u8),
    /// Backend: answer up to n consumed requests.
    Respond(u8),
    /// Backend: publish the responses.
    PushResponses,
    /// Backend: re-arm req_event and re-check.
    FinalCheck,
    /// Frontend: consume up to n responses.
    Reap(u8),
    /// Frontend: re-arm rsp_event and re-check.
    FrontFinal,
    /// Hostile: the producer index moved by this much behind the API's back.
    EvilReqProd(u32),
    /// Hostile: the response producer overwritten.
    EvilRspProd(u32),
    /// Hostile: slot (masked) rewritten.
    Scribble(u8, [u8; 12]),
}

#[derive(Arbitrary, Debug)]
struct Script {
    start: u32,
    ops: Vec<Op>,
}

const SIZE: u32 = <TxRing as RingKind>::SIZE;

fn index(page: &SharedPage, off: usize) -> &AtomicU32 {
    assert!(off < RING_HEADER_SIZE && off.is_multiple_of(4));
    // SAFETY: the page is an owned, page-aligned 4096-byte allocation kept alive by
    // `page`; `off` is a 4-aligned offset inside its header; the ring code accesses the
    // same words only atomically.
    unsafe { &*(page.as_ptr().add(off) as *const AtomicU32) }
}

fn scribble(page: &SharedPage, idx: u32, req: TxRequest) {
    let off = RING_HEADER_SIZE + (idx & (SIZE - 1)) as usize * 12;
    // SAFETY: the slot lies inside the owned page (256 slots of 12 bytes after the
    // 64-byte header); TxRequest is plain integers, 2-aligned like the offset; the ring
    // code reads slots only with volatile copies.
    unsafe { std::ptr::write_volatile(page.as_ptr().add(off) as *mut TxRequest, req) }
}

struct Model {
    /// What each slot holds now.
    slots: Vec<TxRequest>,
    honest: bool,
    /// Requests the frontend published, by index.
    published: u32,
    /// Consumed, unanswered: (index, id), oldest first.
    unanswered: VecDeque<(u32, u16)>,
    /// Highest index + 1 the backend has read (indices only grow).
    next_read: u32,
    /// Ids the frontend expects back, in order.
    expect: VecDeque<u16>,
    answered: u64,
}

impl Model {
    fn read(&mut self, back: &BackRing<TxRing>, idx: u32, r: TxRequest) {
        assert_eq!(
            r,
            self.slots[(idx & (SIZE - 1)) as usize],
            "copy differs from the slot"
        );
        assert_eq!(idx, self.next_read, "index read twice or skipped");
        self.next_read = idx.wrapping_add(1);
        if self.honest {
            assert!(
                self.published.wrapping_sub(idx) >= 1 && self.published.wrapping_sub(idx) <= SIZE,
                "unpublished slot {idx} read (published up to {})",
                self.published
            );
            assert_eq!(r.gref, idx, "honest request out of order");
        }
        self.unanswered.push_back((idx, r.id));
        self.check(back);
    }

    /// Answers request `idx`: the response overwrites the first bytes of its slot (the
    /// rings share their slots), which a later read past a hostile producer sees.
    fn respond(&mut self, back: &mut BackRing<TxRing>, idx: u32, id: u16) {
        let rsp = TxResponse { id, status: 0 };
        back.push_response(rsp);
        let slot = &mut self.slots[(idx & (SIZE - 1)) as usize];
        let mut b = slot.to_bytes();
        b[..4].copy_from_slice(&rsp.to_bytes());
        *slot = TxRequest::from_bytes(b);
        self.check(back);
    }

    fn check(&self, back: &BackRing<TxRing>) {
        let pending = back.req_cons().wrapping_sub(back.rsp_prod_pvt());
        assert!(
            pending <= SIZE,
            "{pending} consumed-unanswered requests in a {SIZE}-slot ring"
        );
        assert_eq!(pending as usize, self.unanswered.len());
    }
}

fuzz_target!(|s: Script| {
    let page = SharedPage::new_owned();
    let mut front = FrontRing::<TxRing>::init_at(page.clone(), s.start);
    let mut back = BackRing::<TxRing>::attach(page.clone());
    let mut m = Model {
        slots: vec![TxRequest::default(); SIZE as usize],
        honest: true,
        published: s.start,
        unanswered: VecDeque::new(),
        next_read: s.start,
        expect: VecDeque::new(),
        answered: 0,
    };
    let mut sent = 0u64;
    for op in s.ops.iter().take(512) {
        step(op, &page, &mut front, &mut back, &mut m, &mut sent);
    }
    if m.honest {
        // Drain: everything published is answered exactly once, in order.
        front.push_requests_and_check_notify();
        m.published = front.req_prod_pvt();
        for _ in 0..2 {
            back.begin_batch().expect("honest indices refused");
            while let Some(r) = {
                let i = back.req_cons();
                back.next_batch_request().map(|r| (i, r))
            } {
                m.read(&back, r.0, r.1);
            }
            while let Some((idx, id)) = m.unanswered.pop_front() {
                assert_eq!(back.rsp_prod_pvt(), idx);
                m.respond(&mut back, idx, id);
                m.check(&back);
            }
            back.push_responses_and_check_notify();
            while let Some(r) = front.next_response().expect("honest backend refused") {
                assert_eq!(Some(r.id), m.expect.pop_front(), "response out of order");
                m.answered += 1;
            }
        }
        assert!(
            m.expect.is_empty(),
            "requests left unanswered: {:?}",
            m.expect
        );
        assert_eq!(m.answered, sent);
    }
});

fn step(
    op: &Op,
    page: &SharedPage,
    front: &mut FrontRing<TxRing>,
    back: &mut BackRing<TxRing>,
    m: &mut Model,
    sent: &mut u64,
) {
    match *op {
        Op::Push(n) => {
            for _ in 0..n {
                let idx = front.req_prod_pvt();
                let req = TxRequest {
                    gref: idx,
                    offset: 0,
                    flags: 0,
                    id: idx as u16,
                    size: 60,
                };
                match front.push_request(req) {
                    Ok(()) => {
                        m.slots[(idx & (SIZE - 1)) as usize] = req;
                        m.expect.push_back(req.id);
                        *sent += 1;
                    }
                    Err(RingError::Full) => break,
                    Err(e) => panic!("push: {e:?}"),
                }
            }
        }
        Op::Publish => {
            front.push_requests_and_check_notify();
            if m.honest {
                m.published = front.req_prod_pvt();
            }
        }
        Op::Batch => match back.begin_batch() {
            Ok(()) => assert!(back.batch_unconsumed() <= SIZE),
            Err(RingError::ImpossibleIndex { prod, cons, .. }) => {
                assert!(!m.honest, "honest producer {prod} refused at {cons}");
                assert!(prod.wrapping_sub(cons) > SIZE);
            }
            Err(e) => panic!("begin_batch: {e:?}"),
        },
        Op::Consume(n) => {
            for _ in 0..n {
                let idx = back.req_cons();
                let Some(r) = back.next_batch_request() else {
                    break;
                };
                m.read(back, idx, r);
            }
        }
        Op::ConsumeLive(n) => {
            if back.check_indices().is_err() {
                assert!(!m.honest);
                return;
            }
            for _ in 0..n {
                let idx = back.req_cons();
                let Some(r) = back.next_request() else { break };
                m.read(back, idx, r);
            }
        }
        Op::Respond(n) => {
            for _ in 0..n {
                let Some((idx, id)) = m.unanswered.pop_front() else {
                    break;
                };
                assert_eq!(
                    back.rsp_prod_pvt(),
                    idx,
                    "response not in its request's slot"
                );
                m.respond(back, idx, id);
                m.check(back);
            }
        }
        Op::PushResponses => {
            back.push_responses_and_check_notify();
        }
        Op::FinalCheck => {
            let work = back.final_check_for_requests();
            if m.honest {
                let avail = m.published.wrapping_sub(back.req_cons());
                let room = SIZE - m.unanswered.len() as u32;
                assert_eq!(
                    work,
                    avail.min(room) > 0,
                    "work {work} with {avail} published, {room} free"
                );
                if !work {
                    let ev = index(page, 4).load(Ordering::Relaxed);
                    assert_eq!(
                        ev,
                        back.req_cons().wrapping_add(1),
                        "req_event not re-armed"
                    );
                }
            }
        }
        Op::Reap(n) => {
            for _ in 0..n {
                match front.next_response() {
                    Ok(Some(r)) => {
                        if m.honest {
                            assert_eq!(Some(r.id), m.expect.pop_front(), "response out of order");
                            m.answered += 1;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(!m.honest, "honest backend refused: {e:?}");
                        break;
                    }
                }
            }
        }
        Op::FrontFinal => {
            let r = front.final_check_for_responses();
            assert!(r.is_ok() || !m.honest);
        }
        Op::EvilReqProd(delta) => {
            m.honest = false;
            let p = index(page, 0);
            p.store(
                p.load(Ordering::Relaxed).wrapping_add(delta),
                Ordering::Release,
            );
        }
        Op::EvilRspProd(v) => {
            m.honest = false;
            index(page, 8).store(v, Ordering::Release);
        }
        Op::Scribble(slot, bytes) => {
            // Rewriting an unpublished slot is what an honest frontend does anyway; a
            // published one is a double-fetch attempt.
            m.honest = false;
            let idx = u32::from(slot);
            let req = TxRequest::from_bytes(bytes);
            scribble(page, idx, req);
            m.slots[(idx & (SIZE - 1)) as usize] = req;
        }
    }
}
