use crate::error::{port_err, PmdError};
use crate::mbuf::Mbuf;
use crate::mempool::Mempool;
use dpdk_sys as sys;
use std::ffi::{CStr, CString};

/// An ethdev port: a passthrough NIC or a virtual device (`net_ring`, `net_tap`, ...).
/// Stopped and closed on drop.
pub struct Port {
    id: u16,
    name: String,
    started: bool,
}

/// A flow rule on a port ([`Port::steer_mac`]); removed when dropped (drop it before the
/// port).
#[derive(Debug)]
pub struct FlowRule {
    port: u16,
    flow: std::ptr::NonNull<sys::rte_flow>,
}

// SAFETY: the handle is only passed back to rte_flow_destroy with its port id, which DPDK
// allows from any thread (flow API calls are serialised per port by the PMD).
unsafe impl Send for FlowRule {}

impl Drop for FlowRule {
    fn drop(&mut self) {
        // SAFETY: the flow was created on this port and is destroyed once, here.
        unsafe { sys::nbd_flow_destroy(self.port, self.flow.as_ptr()) };
    }
}

/// What a port can do, from `rte_eth_dev_info_get`.
#[derive(Clone, Debug)]
pub struct PortInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub rx_offload_capa: u64,
    pub tx_offload_capa: u64,
    pub rss_offloads: u64,
    pub min_mtu: u16,
    pub max_mtu: u16,
    /// Longest frame the port can be configured to receive.
    pub max_rx_pktlen: u32,
}

impl PortInfo {
    pub fn has_tx(&self, offload: sys::nbd_eth_offload) -> bool {
        self.tx_offload_capa & u64::from(offload) != 0
    }
    pub fn has_rx(&self, offload: sys::nbd_eth_offload) -> bool {
        self.rx_offload_capa & u64::from(offload) != 0
    }
}

/// How to configure a port.
#[derive(Clone, Debug)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// TX offloads to enable (masked with the port's capabilities).
    pub tx_offloads: u64,
    /// RX offloads to enable (masked with the port's capabilities).
    pub rx_offloads: u64,
    /// Spread RX over the queues by RSS when there is more than one and the port can.
    pub rss: bool,
    pub promiscuous: bool,
    /// The MTU (IP packet size; frames are 14 bytes more, 18 with a VLAN tag); None: the
    /// device's default. Refused beyond the device's `max_mtu` or `max_rx_pktlen`. A frame
    /// larger than one mbuf's data room is received as a chain (RX scatter, where the port
    /// has it) and sent as one (TX multi-segment).
    pub mtu: Option<u16>,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            tx_offloads: 0,
            rx_offloads: 0,
            rss: true,
            promiscuous: true,
            mtu: None,
        }
    }
}

/// Link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

impl Port {
    /// Finds a port by its device name: a PCI address or a vdev name as given to
    /// `--vdev` (e.g. "net_ring0", "net_tap0").
    pub fn by_name(name: &str) -> Result<Port, PmdError> {
        let c = CString::new(name).map_err(|_| PmdError::PortNotFound(name.to_owned()))?;
        let mut id = 0u16;
        // SAFETY: valid C string and out pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if ret != 0 {
            return Err(PmdError::PortNotFound(name.to_owned()));
        }
        Ok(Port {
            id,
            name: name.to_owned(),
            started: false,
        })
    }

    /// Probes a device from a devargs string ("net_tap0,iface=x", "0000:03:00.0") and
    /// returns its port. Use for devices not given on the EAL command line.
    pub fn probe(devargs: &str) -> Result<Port, PmdError> {
        let c = CString::new(devargs)
            .map_err(|_| PmdError::InvalidArgument(format!("devargs {devargs:?}")))?;
        // SAFETY: valid C string.
        let ret = unsafe { sys::rte_dev_probe(c.as_ptr()) };
        if ret < 0 {
            return Err(port_err(u16::MAX, "rte_dev_probe", ret));
        }
        let name = devargs.split(',').next().unwrap_or(devargs);
        Port::by_name(name)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the port (`rte_flow`) to deliver ingress frames for destination `mac` (and VLAN
    /// ID `vlan`, when given) to RX queue `queue`. Refused (an error saying why) by ports
    /// without flow steering: most virtual devices.
    pub fn steer_mac(
        &self,
        mac: [u8; 6],
        vlan: Option<u16>,
        queue: u16,
    ) -> Result<FlowRule, PmdError> {
        let (mut code, mut msg) = (0i32, std::ptr::null());
        let vlan = vlan.map_or(-1, |v| i32::from(v & 0x0fff));
        // SAFETY: `mac` is 6 readable bytes; the out pointers are valid locals; the port id
        // is this port's.
        let f = unsafe {
            sys::nbd_flow_mac_to_queue(self.id, mac.as_ptr(), vlan, queue, &mut code, &mut msg)
        };
        match std::ptr::NonNull::new(f) {
            Some(flow) => Ok(FlowRule {
                port: self.id,
                flow,
            }),
            None => {
                let why = if msg.is_null() {
                    crate::error::strerror(-code)
                } else {
                    // SAFETY: DPDK's flow error messages are static NUL-terminated strings.
                    unsafe { CStr::from_ptr(msg) }
                        .to_string_lossy()
                        .into_owned()
                };
                Err(PmdError::Port {
                    port: self.id,
                    op: "rte_flow (MAC to queue)",
                    code,
                    msg: why,
                })
            }
        }
    }

    pub fn info(&self) -> Result<PortInfo, PmdError> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port id and out pointer.
        let ret = unsafe { sys::rte_eth_dev_info_get(self.id, &mut info) };
        if ret != 0 {
            return Err(port_err(self.id, "rte_eth_dev_info_get", ret));
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: DPDK's driver name is a static NUL-terminated string.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(PortInfo {
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            rx_offload_capa: info.rx_offload_capa,
            tx_offload_capa: info.tx_offload_capa,
            rss_offloads: info.flow_type_rss_offloads,
            min_mtu: info.min_mtu,
            max_mtu: info.max_mtu,
            max_rx_pktlen: info.max_rx_pktlen,
        })
    }

    /// Configures queues (RX mbufs from `pool`) and starts the port.
    pub fn configure_and_start(
        &mut self,
        cfg: &PortConfig,
        pool: &Mempool,
    ) -> Result<(), PmdError> {
        let info = self.info()?;
        if cfg.rx_queues > info.max_rx_queues || cfg.tx_queues > info.max_tx_queues {
            return Err(PmdError::InvalidArgument(format!(
                "port {} ({}) supports {} rx / {} tx queues, {} / {} asked",
                self.name,
                info.driver,
                info.max_rx_queues,
                info.max_tx_queues,
                cfg.rx_queues,
                cfg.tx_queues
            )));
        }
        let mut conf = sys::rte_eth_conf::default();
        conf.txmode.offloads = cfg.tx_offloads & info.tx_offload_capa;
        conf.rxmode.offloads = cfg.rx_offloads & info.rx_offload_capa;
        if let Some(mtu) = cfg.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(PmdError::InvalidArgument(format!(
                    "mtu {mtu}: port {} ({}) takes {}..={}",
                    self.name, info.driver, info.min_mtu, info.max_mtu
                )));
            }
            // The largest frame the MTU lets in, with DPDK's overhead for this device (what
            // `rte_eth_dev_configure` checks): the gap between its largest frame and MTU where
            // it has one, else Ethernet header + CRC. (A VLAN tag on top was our own rule and
            // refused the default 1500 on devices that take exactly 1518, e.g. net_memif.)
            let overhead =
                if info.max_mtu != u16::MAX && info.max_rx_pktlen > u32::from(info.max_mtu) {
                    info.max_rx_pktlen - u32::from(info.max_mtu)
                } else {
                    14 + 4
                };
            if info.max_rx_pktlen != 0 && u32::from(mtu) + overhead > info.max_rx_pktlen {
                return Err(PmdError::InvalidArgument(format!(
                    "mtu {mtu}: port {} ({}) receives frames of at most {} bytes",
                    self.name, info.driver, info.max_rx_pktlen
                )));
            }
            conf.rxmode.mtu = u32::from(mtu);
            // Frames longer than one mbuf's data room arrive as chains where the port can
            // (RX scatter). Ports that hand mbufs over whole (net_ring, memif) need not.
            // SAFETY: the pool is a valid pktmbuf pool.
            let room = unsafe { sys::nbd_pktmbuf_data_room_size(pool.as_ptr()) };
            let room = u32::from(room).saturating_sub(sys::RTE_PKTMBUF_HEADROOM);
            // Scatter where a frame (a VLAN tag included) can exceed one mbuf.
            if u32::from(mtu) + 14 + 4 + 4 > room {
                conf.rxmode.offloads |=
                    u64::from(sys::NBD_RX_OFFLOAD_SCATTER) & info.rx_offload_capa;
            }
            conf.txmode.offloads |=
                u64::from(sys::NBD_TX_OFFLOAD_MULTI_SEGS) & info.tx_offload_capa;
        }
        if cfg.rss && cfg.rx_queues > 1 && info.rss_offloads != 0 {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            let want = u64::from(sys::NBD_RSS_IPV4)
                | u64::from(sys::NBD_RSS_NONFRAG_IPV4_TCP)
                | u64::from(sys::NBD_RSS_NONFRAG_IPV4_UDP)
                | u64::from(sys::NBD_RSS_IPV6)
                | u64::from(sys::NBD_RSS_NONFRAG_IPV6_TCP)
                | u64::from(sys::NBD_RSS_NONFRAG_IPV6_UDP);
            conf.rx_adv_conf.rss_conf.rss_hf = want & info.rss_offloads;
        }
        // SAFETY: valid port id and config struct.
        let ret =
            unsafe { sys::rte_eth_dev_configure(self.id, cfg.rx_queues, cfg.tx_queues, &conf) };
        if ret != 0 {
            return Err(port_err(self.id, "rte_eth_dev_configure", ret));
        }
        // SAFETY: valid port id.
        let socket = unsafe { sys::rte_eth_dev_socket_id(self.id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..cfg.rx_queues {
            // SAFETY: configured port; null rx_conf = driver defaults; pool outlives the
            // port's use of it (callers drop ports before pools).
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    cfg.rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if ret != 0 {
                return Err(port_err(self.id, "rte_eth_rx_queue_setup", ret));
            }
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: configured port; null tx_conf = driver defaults.
            let ret = unsafe {
                sys::rte_eth_tx_queue_setup(self.id, q, cfg.tx_desc, socket, std::ptr::null())
            };
            if ret != 0 {
                return Err(port_err(self.id, "rte_eth_tx_queue_setup", ret));
            }
        }
        if cfg.promiscuous {
            // SAFETY: valid port id. Not all vdevs support it; failure is harmless.
            unsafe { sys::rte_eth_promiscuous_enable(self.id) };
        }
        // SAFETY: configured port.
        let ret = unsafe { sys::rte_eth_dev_start(self.id) };
        if ret != 0 {
            return Err(port_err(self.id, "rte_eth_dev_start", ret));
        }
        self.started = true;
        Ok(())
    }

    /// Receives up to `max` packets from `queue`, appending them to `out`; returns how many.
    /// Only the lcore that owns `queue` may call this.
    pub fn rx_burst(&self, queue: u16, out: &mut Vec<Mbuf>, max: u16) -> usize {
        out.reserve(usize::from(max));
        let len = out.len();
        // SAFETY: `out` has room for `max` more elements; Mbuf is repr(transparent) over
        // a non-null mbuf pointer; DPDK writes `n` valid owned mbufs that we then own.
        unsafe {
            let dst = out.as_mut_ptr().add(len) as *mut *mut sys::rte_mbuf;
            let n = sys::nbd_eth_rx_burst(self.id, queue, dst, max);
            out.set_len(len + usize::from(n));
            usize::from(n)
        }
    }

    /// Sends the packets in `pkts` on `queue`. Sent mbufs are consumed and removed from the
    /// front of `pkts`; those the port refused stay, in order, for the caller to retry or
    /// free (and count). Returns how many were sent.
    pub fn tx_burst(&self, queue: u16, pkts: &mut Vec<Mbuf>) -> usize {
        let n = pkts.len().min(usize::from(u16::MAX));
        if n == 0 {
            return 0;
        }
        // SAFETY: pkts holds n owned mbufs; DPDK takes ownership of the first `sent`. We
        // then move the unsent tail to the front and shrink the Vec without dropping the
        // sent ones (they belong to the driver now).
        unsafe {
            let base = pkts.as_mut_ptr();
            let sent = usize::from(sys::nbd_eth_tx_burst(
                self.id,
                queue,
                base as *mut *mut sys::rte_mbuf,
                n as u16,
            ));
            let total = pkts.len();
            std::ptr::copy(base.add(sent), base, total - sent);
            pkts.set_len(total - sent);
            sent
        }
    }

    /// Sends `pkts` on `queue`; whatever the port refuses is freed at once (bulk) and
    /// counted. Returns (sent, dropped); `pkts` is empty afterwards.
    pub fn tx_burst_or_drop(&self, queue: u16, pkts: &mut Vec<Mbuf>) -> (usize, usize) {
        let sent = self.tx_burst(queue, pkts);
        let dropped = pkts.len();
        crate::mbuf::free_bulk(pkts);
        (sent, dropped)
    }

    /// Current link state without waiting.
    pub fn link(&self) -> Result<LinkStatus, PmdError> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: valid port id and out pointer.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.id, &mut l) };
        if ret != 0 {
            return Err(port_err(self.id, "rte_eth_link_get_nowait", ret));
        }
        Ok(LinkStatus {
            up: l.link_status() != 0,
            speed_mbps: l.link_speed,
            full_duplex: l.link_duplex() != 0,
        })
    }

    /// Extended statistics as (name, value) pairs.
    pub fn xstats(&self) -> Result<Vec<(String, u64)>, PmdError> {
        // SAFETY: null/0 asks for the count.
        let n = unsafe { sys::rte_eth_xstats_get_names(self.id, std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(port_err(self.id, "rte_eth_xstats_get_names", n));
        }
        let mut names = vec![sys::rte_eth_xstat_name::default(); n as usize];
        let mut vals = vec![sys::rte_eth_xstat::default(); n as usize];
        // SAFETY: arrays of n elements.
        let got = unsafe { sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), n as u32) };
        if got < 0 {
            return Err(port_err(self.id, "rte_eth_xstats_get_names", got));
        }
        // SAFETY: array of n elements.
        let got2 = unsafe { sys::rte_eth_xstats_get(self.id, vals.as_mut_ptr(), n as u32) };
        if got2 < 0 {
            return Err(port_err(self.id, "rte_eth_xstats_get", got2));
        }
        let k = (got.min(got2) as usize).min(names.len());
        Ok(vals[..k]
            .iter()
            .filter_map(|v| {
                let name = names.get(v.id as usize)?;
                // SAFETY: DPDK NUL-terminates names within RTE_ETH_XSTATS_NAME_SIZE.
                let s = unsafe { CStr::from_ptr(name.name.as_ptr()) };
                Some((s.to_string_lossy().into_owned(), v.value))
            })
            .collect())
    }

    /// Basic counters: (ipackets, opackets, ibytes, obytes, imissed, oerrors).
    pub fn stats(&self) -> Result<sys::rte_eth_stats, PmdError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port id and out pointer.
        let ret = unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        if ret != 0 {
            return Err(port_err(self.id, "rte_eth_stats_get", ret));
        }
        Ok(s)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: valid port id; stop/close are idempotent enough for our single owner.
        unsafe {
            if self.started {
                sys::rte_eth_dev_stop(self.id);
            }
            sys::rte_eth_dev_close(self.id);
        }
    }
}
