//! The guest's IP stack: smoltcp over any [`FrameLink`] (the netfront, or an in-memory
//! pair in tests). It answers ARP and ICMP echo by itself and runs TCP servers and clients;
//! bulk transfers carry a deterministic stream with a checksum so both ends can compare.
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One Ethernet interface of a guest.
pub trait FrameLink {
    /// Takes one received frame, if any.
    fn recv(&mut self) -> Option<Vec<u8>>;
    /// Sends one frame; false when the link has no room now (back-pressure: try later).
    fn send(&mut self, frame: &[u8]) -> bool;
}

/// Two links joined back to back (for tests without a backend).
pub struct MemLink {
    rx: std::sync::Arc<std::sync::Mutex<VecDeque<Vec<u8>>>>,
    tx: std::sync::Arc<std::sync::Mutex<VecDeque<Vec<u8>>>>,
    cap: usize,
}

impl MemLink {
    pub fn pair(cap: usize) -> (MemLink, MemLink) {
        let a = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let b = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        (
            MemLink {
                rx: a.clone(),
                tx: b.clone(),
                cap,
            },
            MemLink { rx: b, tx: a, cap },
        )
    }
}

impl FrameLink for MemLink {
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
    fn send(&mut self, frame: &[u8]) -> bool {
        let mut q = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.cap {
            return false;
        }
        q.push_back(frame.to_vec());
        true
    }
}

/// smoltcp device over queues that `Stack::poll` fills from and drains to the link.
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct QRx(Vec<u8>);
struct QTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for QRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for QTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.push_back(v);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QRx;
    type TxToken<'a> = QTx<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(QRx, QTx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((QRx(f), QTx(&mut self.tx)))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<QTx<'_>> {
        // Bounded: the stack backs off when the link is congested.
        (self.tx.len() < 256).then_some(QTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c.max_burst_size = Some(64);
        c
    }
}

/// A guest's IP stack on one link.
pub struct Stack<L: FrameLink> {
    pub link: L,
    dev: QueueDevice,
    iface: Interface,
    pub sockets: SocketSet<'static>,
    t0: Instant,
    /// Frames smoltcp produced that the link had no room for yet.
    pending: VecDeque<Vec<u8>>,
}

impl<L: FrameLink> Stack<L> {
    pub fn new(link: L, mac: [u8; 6], ip: [u8; 4], prefix: u8) -> Self {
        Self::with_mtu(link, mac, ip, prefix, 1500)
    }

    /// As [`Stack::new`] with IP MTU `mtu` (e.g. 9000 for jumbo frames).
    pub fn with_mtu(link: L, mac: [u8; 6], ip: [u8; 4], prefix: u8, mtu: usize) -> Self {
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(cfg, &mut dev, SInstant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(ip)), prefix));
        });
        Stack {
            link,
            dev,
            iface,
            sockets: SocketSet::new(vec![]),
            t0: Instant::now(),
            pending: VecDeque::new(),
        }
    }

    fn now(&self) -> SInstant {
        SInstant::from_micros(self.t0.elapsed().as_micros() as i64)
    }

    /// Moves frames between the link and smoltcp once; true if anything moved.
    pub fn poll(&mut self) -> bool {
        let mut moved = false;
        while let Some(f) = self.link.recv() {
            self.dev.rx.push_back(f);
            moved = true;
            if self.dev.rx.len() >= 256 {
                break;
            }
        }
        let now = self.now();
        let _ = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.pending.extend(self.dev.tx.drain(..));
        while let Some(f) = self.pending.front() {
            if !self.link.send(f) {
                break;
            }
            self.pending.pop_front();
            moved = true;
        }
        moved
    }

    /// Sends `count` ICMP echo requests to `dst` (one at a time, each waiting up to
    /// `timeout`) and returns how many were answered.
    pub fn ping(
        &mut self,
        dst: [u8; 4],
        count: u16,
        timeout: Duration,
        mut between: impl FnMut(&mut Self),
    ) -> u16 {
        let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
        let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
        let h = self.sockets.add(icmp::Socket::new(rx, tx));
        let ident = 0x4e42;
        self.sockets
            .get_mut::<icmp::Socket>(h)
            .bind(icmp::Endpoint::Ident(ident))
            .expect("bind icmp");
        let dst = IpAddress::Ipv4(Ipv4Address::from(dst));
        let mut got = 0;
        for seq in 0..count {
            let req = smoltcp::wire::Icmpv4Repr::EchoRequest {
                ident,
                seq_no: seq,
                data: b"netbackd-ping",
            };
            let deadline = Instant::now() + timeout;
            let mut sent = false;
            while Instant::now() < deadline {
                if !sent {
                    let s = self.sockets.get_mut::<icmp::Socket>(h);
                    if s.can_send() {
                        let buf = s.send(req.buffer_len(), dst).expect("icmp send");
                        let mut pkt = smoltcp::wire::Icmpv4Packet::new_unchecked(buf);
                        req.emit(&mut pkt, &smoltcp::phy::ChecksumCapabilities::default());
                        sent = true;
                    }
                }
                self.poll();
                between(self);
                let s = self.sockets.get_mut::<icmp::Socket>(h);
                if s.can_recv() {
                    let (data, _) = s.recv().expect("icmp recv");
                    let p = smoltcp::wire::Icmpv4Packet::new_unchecked(data);
                    if p.msg_type() == smoltcp::wire::Icmpv4Message::EchoReply
                        && p.echo_seq_no() == seq
                    {
                        got += 1;
                        break;
                    }
                }
            }
        }
        self.sockets.remove(h);
        got
    }

    /// A TCP socket listening on `port`.
    pub fn tcp_listen(&mut self, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        s.listen(port).expect("listen");
        self.sockets.add(s)
    }

    /// A TCP socket connecting to `dst:port` from `local_port`.
    pub fn tcp_connect(&mut self, dst: [u8; 4], port: u16, local_port: u16) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        let h = self.sockets.add(s);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(
                cx,
                (IpAddress::Ipv4(Ipv4Address::from(dst)), port),
                local_port,
            )
            .expect("connect");
        h
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

/// FNV-1a 64 over a byte stream, to compare what two ends saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSum {
    pub bytes: u64,
    pub hash: u64,
}

impl Default for StreamSum {
    fn default() -> Self {
        StreamSum {
            bytes: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl StreamSum {
    pub fn update(&mut self, b: &[u8]) {
        for x in b {
            self.hash ^= u64::from(*x);
            self.hash = self.hash.wrapping_mul(0x100_0000_01b3);
        }
        self.bytes += b.len() as u64;
    }
}

/// The deterministic stream a bulk sender sends: byte i is a function of i and the seed.
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// Sends `total` bytes of the stream on a TCP socket, one step at a time.
pub struct BulkSender {
    pub h: SocketHandle,
    pub total: u64,
    pub seed: u64,
    pub sent: StreamSum,
    closed: bool,
}

impl BulkSender {
    pub fn new(h: SocketHandle, total: u64, seed: u64) -> Self {
        BulkSender {
            h,
            total,
            seed,
            sent: StreamSum::default(),
            closed: false,
        }
    }

    /// Pushes what fits; closes when all is sent. True when done.
    pub fn step<L: FrameLink>(&mut self, st: &mut Stack<L>) -> bool {
        let (seed, total) = (self.seed, self.total);
        let sent = &mut self.sent;
        let s = st.tcp(self.h);
        if s.may_send() && sent.bytes < total {
            let _ = s.send(|buf| {
                let n = buf.len().min((total - sent.bytes) as usize);
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    *b = stream_byte(seed, sent.bytes + k as u64);
                }
                sent.update(&buf[..n]);
                (n, ())
            });
        }
        if sent.bytes == total && !self.closed && s.send_queue() == 0 {
            s.close();
            self.closed = true;
        }
        self.closed
    }
}

/// Receives a TCP stream to its end, summing it.
pub struct BulkReceiver {
    pub h: SocketHandle,
    pub got: StreamSum,
}

impl BulkReceiver {
    pub fn new(h: SocketHandle) -> Self {
        BulkReceiver {
            h,
            got: StreamSum::default(),
        }
    }

    /// True when the peer has closed and everything was read.
    pub fn step<L: FrameLink>(&mut self, st: &mut Stack<L>) -> bool {
        let got = &mut self.got;
        let s = st.tcp(self.h);
        while s.can_recv() {
            let _ = s.recv(|buf| {
                got.update(buf);
                (buf.len(), ())
            });
        }
        let done = !s.may_recv() && got.bytes > 0;
        if done && s.is_open() {
            s.close();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn pair() -> (Stack<MemLink>, Stack<MemLink>) {
        let (la, lb) = MemLink::pair(512);
        (
            Stack::new(la, [0x02, 0, 0, 0, 0, 1], A, 24),
            Stack::new(lb, [0x02, 0, 0, 0, 0, 2], B, 24),
        )
    }

    #[test]
    fn arp_and_ping() {
        let (mut a, mut b) = pair();
        let got = a.ping(B, 10, Duration::from_secs(2), |_| {
            b.poll();
        });
        assert_eq!(got, 10);
        // Nobody at .3: no replies.
        let got = a.ping([10, 0, 0, 3], 2, Duration::from_millis(100), |_| {
            b.poll();
        });
        assert_eq!(got, 0);
    }

    /// 4 MB each way over TCP; both ends' sums equal.
    #[test]
    fn tcp_both_ways() {
        let (mut a, mut b) = pair();
        let total = 4 << 20;
        let lb = b.tcp_listen(7000);
        let la = a.tcp_listen(7001);
        let ca = a.tcp_connect(B, 7000, 40000);
        let cb = b.tcp_connect(A, 7001, 40001);
        let mut sa = BulkSender::new(ca, total, 1);
        let mut sb = BulkSender::new(cb, total, 2);
        let mut ra = BulkReceiver::new(la);
        let mut rb = BulkReceiver::new(lb);
        let t = Instant::now();
        let mut done = false;
        while !done {
            assert!(t.elapsed() < Duration::from_secs(60), "transfer stuck");
            a.poll();
            b.poll();
            let d1 = sa.step(&mut a) & sb.step(&mut b);
            let d2 = rb.step(&mut b) & ra.step(&mut a);
            done = d1 && d2;
        }
        assert_eq!(sa.sent, rb.got);
        assert_eq!(sb.sent, ra.got);
        assert_eq!(rb.got.bytes, total);
        // The stream sum really depends on the bytes.
        let mut other = StreamSum::default();
        other.update(&[stream_byte(1, 0) ^ 1]);
        let mut one = StreamSum::default();
        one.update(&[stream_byte(1, 0)]);
        assert_ne!(other, one);
    }
}
