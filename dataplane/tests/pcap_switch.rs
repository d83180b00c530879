//! The switch with VLANs over DPDK `net_pcap` ports: frames are read from capture files the
//! test writes, switched, tagged or stripped, flooded, and the capture files the ports
//! write are compared frame by frame with the expected frames. EAL once per process.
use dataplane::switch::{apply_egress, Decision, EndpointId, EndpointKind, Switch, SwitchConfig};
use pmd::{Eal, Mbuf, Mempool, Port, PortConfig};
use std::path::{Path, PathBuf};

const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const VIF: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 1];
const VIF2: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 2];
const BCAST: [u8; 6] = [0xff; 6];

fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, tag: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((0..60).map(|i| tag.wrapping_add(i)));
    f
}

fn tagged(f: &[u8], vlan: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&[0x81, 0x00]);
    t.extend_from_slice(&vlan.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

fn untagged(f: &[u8]) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&f[16..]);
    t
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]); // thiszone, sigfigs
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        b.extend_from_slice(&(i as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).unwrap();
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap();
    let magic = u32::from_le_bytes(b[..4].try_into().unwrap());
    // Microsecond or (what net_pcap writes) nanosecond timestamps.
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "pcap magic {magic:#x}"
    );
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        out.push(b[at..at + incl].to_vec());
        at += incl;
    }
    out
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn switch_vlans_through_pcap_ports() {
    let pid = std::process::id();
    let dir = TempDir(std::env::temp_dir().join(format!("nbd-pcap-{pid}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let p = |n: &str| dir.0.join(n);

    // Frames from the wire (uplink) and from the access vif.
    let f1 = frame(VIF, HOST, Some(100), 1); // to the access vif, tagged 100
    let f2 = frame(VIF, HOST, Some(200), 2); // wrong VLAN: nobody there
    let f3 = frame(BCAST, HOST, None, 3); // untagged broadcast: untagged vif only
    let f4 = frame(VIF2, HOST, None, 4); // to the untagged vif
    let f5 = frame(HOST, VIF, None, 5); // access vif to the learned host
    let f6 = frame(BCAST, VIF, None, 6); // broadcast in VLAN 100
    write_pcap(&p("up_in.pcap"), &[f1.clone(), f2, f3.clone(), f4.clone()]);
    write_pcap(&p("vif_in.pcap"), &[f5.clone(), f6.clone()]);
    write_pcap(&p("v2_in.pcap"), &[]);

    let vdevs: Vec<String> = [("0", "up"), ("1", "vif"), ("2", "v2")]
        .iter()
        .map(|(i, n)| {
            format!(
                "net_pcap{i},rx_pcap={},tx_pcap={}",
                p(&format!("{n}_in.pcap")).display(),
                p(&format!("{n}_out.pcap")).display()
            )
        })
        .collect();
    let prefix = format!("nbd-pcap-{pid}");
    let mut args = vec![
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--log-level",
        "*:error",
    ];
    for v in &vdevs {
        args.push("--vdev");
        args.push(v);
    }
    let eal = Eal::init(&args).expect("EAL with net_pcap ports");
    {
        let pool = Mempool::new("pcap_pool", 1023, 32, 2176, -1).unwrap();
        let mut ports: Vec<Port> = (0..3)
            .map(|i| {
                let mut port = Port::by_name(&format!("net_pcap{i}")).unwrap();
                port.configure_and_start(&PortConfig::default(), &pool)
                    .unwrap();
                port
            })
            .collect();
        let mut sw = Switch::new(SwitchConfig::default());
        sw.add_endpoint(EndpointId(0), EndpointKind::Uplink);
        sw.add_endpoint(
            EndpointId(1),
            EndpointKind::Vif {
                mac: VIF,
                vlan: Some(100),
            },
        );
        sw.add_endpoint(
            EndpointId(2),
            EndpointKind::Vif {
                mac: VIF2,
                vlan: None,
            },
        );

        // Uplink first (so the host is learned in VLAN 100), then the vif.
        for i in 0..2 {
            let mut rx = Vec::new();
            for _ in 0..1000 {
                ports[i].rx_burst(0, &mut rx, 32);
            }
            let mut tx: [Vec<Mbuf>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for m in rx {
                let from = EndpointId(i as u32);
                match sw.forward(from, m.data(), 0) {
                    Decision::Unicast(to, e) => {
                        let mut m = m;
                        assert!(apply_egress(&mut m, e));
                        tx[to.0 as usize].push(m);
                    }
                    Decision::Flood { domain } => {
                        let targets: Vec<_> = sw.flood_targets(from, domain).collect();
                        for (to, e) in targets {
                            let mut c = m.deep_copy(&pool).unwrap();
                            assert!(apply_egress(&mut c, e));
                            tx[to.0 as usize].push(c);
                        }
                    }
                    Decision::Drop(r) => panic!("unexpected drop {r:?}"),
                }
            }
            for (j, q) in tx.iter_mut().enumerate() {
                let (_, dropped) = ports[j].tx_burst_or_drop(0, q);
                assert_eq!(dropped, 0);
            }
        }
        ports.clear(); // closing the ports flushes the capture files
        assert_eq!(pool.in_use(), 0);
    }
    drop(eal);
    assert_eq!(
        read_pcap(&p("up_out.pcap")),
        vec![tagged(&f5, 100), tagged(&f6, 100)]
    );
    assert_eq!(read_pcap(&p("vif_out.pcap")), vec![untagged(&f1)]);
    assert_eq!(read_pcap(&p("v2_out.pcap")), vec![f3, f4]);
}
