//! The netif wire ABI (`xen/io/netif.h`): request, response and extra-info layouts, flags
//! and status values, ring sizes for 4096-byte pages.
//!
//! Plain `repr(C)` integer structs, exactly the C layouts (checked against the bindgen'd
//! headers in the tests), so a value can be copied out of a ring slot byte for byte. They
//! are only ever *copies*: shared memory is accessed by `ring.rs` alone.

/// Bytes of a page shared with a frontend (rings and data buffers).
pub const PAGE_SIZE: usize = 4096;
/// The shared ring header (indices + padding) before the first entry.
pub const RING_HEADER_SIZE: usize = 64;

/// Guest TX request (`netif_tx_request`): one slot of a packet the guest sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    /// First slot: the whole packet's size; following slots: their own size.
    pub size: u16,
}

/// Guest TX response (`netif_tx_response`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxResponse {
    pub id: u16,
    pub status: i16,
}

/// Guest RX request (`netif_rx_request`): a granted page the guest offers for receiving.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxRequest {
    pub id: u16,
    pub pad: u16,
    pub gref: u32,
}

/// Guest RX response (`netif_rx_response`); `status` > 0 is the byte count, < 0 an error.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    pub status: i16,
}

/// An extra-info slot (`netif_extra_info`): 8 bytes, the type, flags, then a 6-byte
/// payload whose meaning depends on the type (GSO, multicast, hash).
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraInfo {
    pub ty: u8,
    pub flags: u8,
    pub payload: [u8; 6],
}

/// GSO payload of an extra: `{u16 size, u8 type, u8 pad, u16 features}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GsoExtra {
    pub size: u16,
    pub gso_type: u8,
    pub features: u16,
}

/// Hash payload of an extra: `{u8 type, u8 algorithm, u8 value[4]}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashExtra {
    pub hash_type: u8,
    pub algorithm: u8,
    pub value: [u8; 4],
}

impl ExtraInfo {
    pub fn gso(size: u16, gso_type: u8, more: bool) -> ExtraInfo {
        let s = size.to_le_bytes();
        ExtraInfo {
            ty: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: if more { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 },
            payload: [s[0], s[1], gso_type, 0, 0, 0],
        }
    }

    pub fn mcast(ty: u8, addr: [u8; 6], more: bool) -> ExtraInfo {
        ExtraInfo {
            ty,
            flags: if more { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 },
            payload: addr,
        }
    }

    pub fn as_gso(&self) -> GsoExtra {
        let p = self.payload;
        GsoExtra {
            size: u16::from_le_bytes([p[0], p[1]]),
            gso_type: p[2],
            features: u16::from_le_bytes([p[4], p[5]]),
        }
    }

    pub fn as_mcast(&self) -> [u8; 6] {
        self.payload
    }

    pub fn as_hash(&self) -> HashExtra {
        let p = self.payload;
        HashExtra {
            hash_type: p[0],
            algorithm: p[1],
            value: [p[2], p[3], p[4], p[5]],
        }
    }

    pub fn more(&self) -> bool {
        self.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0
    }

    pub fn to_bytes(self) -> [u8; 8] {
        let p = self.payload;
        [self.ty, self.flags, p[0], p[1], p[2], p[3], p[4], p[5]]
    }

    pub fn from_bytes(b: [u8; 8]) -> ExtraInfo {
        ExtraInfo {
            ty: b[0],
            flags: b[1],
            payload: [b[2], b[3], b[4], b[5], b[6], b[7]],
        }
    }

    /// An extra travels in a TX slot: reinterpret the slot's first 8 bytes.
    pub fn from_tx_slot(r: &TxRequest) -> ExtraInfo {
        let b = r.to_bytes();
        ExtraInfo::from_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The TX-slot image of this extra (as a frontend writes it; the last 4 bytes zero).
    pub fn to_tx_slot(self) -> TxRequest {
        let e = self.to_bytes();
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&e);
        TxRequest::from_bytes(b)
    }

    /// In the RX ring an extra goes in a response slot (8 bytes, same size).
    pub fn to_rx_slot(self) -> RxResponse {
        RxResponse::from_bytes(self.to_bytes())
    }

    pub fn from_rx_slot(r: &RxResponse) -> ExtraInfo {
        ExtraInfo::from_bytes(r.to_bytes())
    }
}

/// Control ring request (`xen_netif_ctrl_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlRequest {
    pub id: u16,
    pub ty: u16,
    pub data: [u32; 3],
}

/// Control ring response (`xen_netif_ctrl_response`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlResponse {
    pub id: u16,
    pub ty: u16,
    pub status: u32,
    pub data: u32,
}

macro_rules! le_bytes {
    ($t:ty, $n:expr, [$($f:ident : $ft:ty),*]) => {
        impl $t {
            /// The little-endian wire image.
            pub fn to_bytes(self) -> [u8; $n] {
                let mut b = [0u8; $n];
                let mut at = 0usize;
                $(
                    let v = self.$f.to_le_bytes();
                    b[at..at + v.len()].copy_from_slice(&v);
                    at += v.len();
                )*
                debug_assert_eq!(at, $n);
                b
            }
            /// Parses the little-endian wire image.
            pub fn from_bytes(b: [u8; $n]) -> Self {
                let mut at = 0usize;
                $(
                    let $f = {
                        let mut v = [0u8; std::mem::size_of::<$ft>()];
                        let w = v.len();
                        v.copy_from_slice(&b[at..at + w]);
                        at += w;
                        <$ft>::from_le_bytes(v)
                    };
                )*
                debug_assert_eq!(at, $n);
                Self { $($f),* }
            }
        }
    };
}
le_bytes!(TxRequest, 12, [gref: u32, offset: u16, flags: u16, id: u16, size: u16]);
le_bytes!(TxResponse, 4, [id: u16, status: i16]);
le_bytes!(RxRequest, 8, [id: u16, pad: u16, gref: u32]);
le_bytes!(RxResponse, 8, [id: u16, offset: u16, flags: u16, status: i16]);
le_bytes!(CtrlResponse, 12, [id: u16, ty: u16, status: u32, data: u32]);

impl CtrlRequest {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.id.to_le_bytes());
        b[2..4].copy_from_slice(&self.ty.to_le_bytes());
        for (i, d) in self.data.iter().enumerate() {
            b[4 + 4 * i..8 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        CtrlRequest {
            id: u16::from_le_bytes([b[0], b[1]]),
            ty: u16::from_le_bytes([b[2], b[3]]),
            data: [w(4), w(8), w(12)],
        }
    }
}

// Guest TX request flags (`NETTXF_*`).
pub const NETTXF_CSUM_BLANK: u16 = 1;
pub const NETTXF_DATA_VALIDATED: u16 = 2;
pub const NETTXF_MORE_DATA: u16 = 4;
pub const NETTXF_EXTRA_INFO: u16 = 8;

// Guest RX response flags (`NETRXF_*`).
pub const NETRXF_DATA_VALIDATED: u16 = 1;
pub const NETRXF_CSUM_BLANK: u16 = 2;
pub const NETRXF_MORE_DATA: u16 = 4;
pub const NETRXF_EXTRA_INFO: u16 = 8;
pub const NETRXF_GSO_PREFIX: u16 = 16;

// Extra-info types and flags.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// First invalid type in Xen 4.17's netif.h (newer headers add XDP = 5, MAX = 6; a 4.17
/// backend treats 5 as invalid, as Linux built against these headers does).
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1;

// GSO types.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

// Response status (`NETIF_RSP_*` in Xen 4.17's netif.h, `XEN_NETIF_RSP_*` in Linux's copy).
pub const XEN_NETIF_RSP_DROPPED: i16 = -2;
pub const XEN_NETIF_RSP_ERROR: i16 = -1;
pub const XEN_NETIF_RSP_OKAY: i16 = 0;
pub const XEN_NETIF_RSP_NULL: i16 = 1;

// Control ring request types (`XEN_NETIF_CTRL_TYPE_*`).
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
pub const XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
pub const XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
pub const XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

// Control ring response status (`XEN_NETIF_CTRL_STATUS_*`).
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

// Hash algorithms (`XEN_NETIF_CTRL_HASH_ALGORITHM_*`).
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;

// Hash types: bit numbers (`_XEN_NETIF_CTRL_HASH_TYPE_*`, what a hash extra's `type`
// carries) and the flag masks built from them (`XEN_NETIF_CTRL_HASH_TYPE_*`, what
// GET/SET_HASH_FLAGS carry).
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4: u8 = 0;
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u8 = 1;
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6: u8 = 2;
pub const _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u8 = 3;
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4;
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6;
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

/// Slots per packet a backend must accept (`XEN_NETIF_NR_SLOTS_MIN`).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// Slot count from which Linux netback treats a frontend as malicious.
pub const FATAL_SLOTS: usize = 20;
/// Largest packet a first TX slot's 16-bit `size` can describe.
pub const MAX_PACKET_SIZE: usize = 0xFFFF;

/// Entries of a shared ring whose entries are `entry_size` bytes: the largest power of two
/// that fits after the header (ring.h's `__RING_SIZE`).
pub const fn ring_size(entry_size: usize) -> usize {
    let n = (PAGE_SIZE - RING_HEADER_SIZE) / entry_size;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Slot size of each ring: requests and responses share a slot (a C union).
pub const TX_ENTRY_SIZE: usize = max(
    std::mem::size_of::<TxRequest>(),
    std::mem::size_of::<TxResponse>(),
);
pub const RX_ENTRY_SIZE: usize = max(
    std::mem::size_of::<RxRequest>(),
    std::mem::size_of::<RxResponse>(),
);
pub const CTRL_ENTRY_SIZE: usize = max(
    std::mem::size_of::<CtrlRequest>(),
    std::mem::size_of::<CtrlResponse>(),
);
pub const TX_RING_SIZE: usize = ring_size(TX_ENTRY_SIZE);
pub const RX_RING_SIZE: usize = ring_size(RX_ENTRY_SIZE);
pub const CTRL_RING_SIZE: usize = ring_size(CTRL_ENTRY_SIZE);
const _: () = assert!(TX_RING_SIZE == 256 && RX_RING_SIZE == 256 && CTRL_RING_SIZE == 128);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};
    use xen_sys as c;

    macro_rules! same_layout {
        ($rust:ty, $c:ty, [$($rf:ident = $cf:ident),*]) => {{
            assert_eq!(size_of::<$rust>(), size_of::<$c>(), "size of {}", stringify!($rust));
            assert_eq!(align_of::<$rust>(), align_of::<$c>(), "align of {}", stringify!($rust));
            $(assert_eq!(
                offset_of!($rust, $rf),
                offset_of!($c, $cf),
                "offset of {}::{}", stringify!($rust), stringify!($rf)
            );)*
        }};
    }

    #[test]
    fn layouts_match_netif_h() {
        same_layout!(
            TxRequest,
            c::netif_tx_request,
            [
                gref = gref,
                offset = offset,
                flags = flags,
                id = id,
                size = size
            ]
        );
        same_layout!(TxResponse, c::netif_tx_response, [id = id, status = status]);
        same_layout!(
            RxRequest,
            c::netif_rx_request,
            [id = id, pad = pad, gref = gref]
        );
        same_layout!(
            RxResponse,
            c::netif_rx_response,
            [id = id, offset = offset, flags = flags, status = status]
        );
        same_layout!(
            ExtraInfo,
            c::netif_extra_info,
            [ty = type_, flags = flags, payload = u]
        );
        same_layout!(
            CtrlRequest,
            c::xen_netif_ctrl_request,
            [id = id, ty = type_, data = data]
        );
        same_layout!(
            CtrlResponse,
            c::xen_netif_ctrl_response,
            [id = id, ty = type_, status = status, data = data]
        );
        // The extra payload variants sit where ExtraInfo::as_* reads them.
        type Gso = c::netif_extra_info__bindgen_ty_1__bindgen_ty_1;
        type Hash = c::netif_extra_info__bindgen_ty_1__bindgen_ty_3;
        assert_eq!(offset_of!(Gso, size), 0);
        assert_eq!(offset_of!(Gso, type_), 2);
        assert_eq!(offset_of!(Gso, features), 4);
        assert_eq!(offset_of!(Hash, algorithm), 1);
        assert_eq!(offset_of!(Hash, value), 2);
        assert_eq!(size_of::<c::netif_extra_info__bindgen_ty_1>(), 6);
    }

    #[test]
    fn shared_ring_header_matches_ring_h() {
        for (req_prod, req_event, rsp_prod, rsp_event, ring, entry) in [
            (
                offset_of!(c::netif_tx_sring, req_prod),
                offset_of!(c::netif_tx_sring, req_event),
                offset_of!(c::netif_tx_sring, rsp_prod),
                offset_of!(c::netif_tx_sring, rsp_event),
                offset_of!(c::netif_tx_sring, ring),
                size_of::<c::netif_tx_sring_entry>(),
            ),
            (
                offset_of!(c::netif_rx_sring, req_prod),
                offset_of!(c::netif_rx_sring, req_event),
                offset_of!(c::netif_rx_sring, rsp_prod),
                offset_of!(c::netif_rx_sring, rsp_event),
                offset_of!(c::netif_rx_sring, ring),
                size_of::<c::netif_rx_sring_entry>(),
            ),
            (
                offset_of!(c::xen_netif_ctrl_sring, req_prod),
                offset_of!(c::xen_netif_ctrl_sring, req_event),
                offset_of!(c::xen_netif_ctrl_sring, rsp_prod),
                offset_of!(c::xen_netif_ctrl_sring, rsp_event),
                offset_of!(c::xen_netif_ctrl_sring, ring),
                size_of::<c::xen_netif_ctrl_sring_entry>(),
            ),
        ] {
            assert_eq!((req_prod, req_event, rsp_prod, rsp_event), (0, 4, 8, 12));
            assert_eq!(ring, RING_HEADER_SIZE);
            // __RING_SIZE: entries that fit after the header, rounded down to 2^k.
            let fit = (PAGE_SIZE - ring) / entry;
            assert_eq!(
                ring_size(entry),
                1 << (usize::BITS - 1 - fit.leading_zeros())
            );
        }
        assert_eq!(size_of::<c::netif_tx_sring_entry>(), TX_ENTRY_SIZE);
        assert_eq!(size_of::<c::netif_rx_sring_entry>(), RX_ENTRY_SIZE);
        assert_eq!(size_of::<c::xen_netif_ctrl_sring_entry>(), CTRL_ENTRY_SIZE);
        assert_eq!(
            (TX_RING_SIZE, RX_RING_SIZE, CTRL_RING_SIZE),
            (256, 256, 128)
        );
    }

    #[test]
    fn constants_match_netif_h() {
        assert_eq!(u32::from(NETTXF_CSUM_BLANK), c::NETTXF_csum_blank);
        assert_eq!(u32::from(NETTXF_DATA_VALIDATED), c::NETTXF_data_validated);
        assert_eq!(u32::from(NETTXF_MORE_DATA), c::NETTXF_more_data);
        assert_eq!(u32::from(NETTXF_EXTRA_INFO), c::NETTXF_extra_info);
        assert_eq!(u32::from(NETRXF_DATA_VALIDATED), c::NETRXF_data_validated);
        assert_eq!(u32::from(NETRXF_CSUM_BLANK), c::NETRXF_csum_blank);
        assert_eq!(u32::from(NETRXF_MORE_DATA), c::NETRXF_more_data);
        assert_eq!(u32::from(NETRXF_EXTRA_INFO), c::NETRXF_extra_info);
        assert_eq!(u32::from(NETRXF_GSO_PREFIX), c::NETRXF_gso_prefix);
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_NONE),
            c::XEN_NETIF_EXTRA_TYPE_NONE
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_GSO),
            c::XEN_NETIF_EXTRA_TYPE_GSO
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
            c::XEN_NETIF_EXTRA_TYPE_MCAST_ADD
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_MCAST_DEL),
            c::XEN_NETIF_EXTRA_TYPE_MCAST_DEL
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_HASH),
            c::XEN_NETIF_EXTRA_TYPE_HASH
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_TYPE_MAX),
            c::XEN_NETIF_EXTRA_TYPE_MAX
        );
        assert_eq!(
            u32::from(XEN_NETIF_EXTRA_FLAG_MORE),
            c::XEN_NETIF_EXTRA_FLAG_MORE
        );
        assert_eq!(
            u32::from(XEN_NETIF_GSO_TYPE_NONE),
            c::XEN_NETIF_GSO_TYPE_NONE
        );
        assert_eq!(
            u32::from(XEN_NETIF_GSO_TYPE_TCPV4),
            c::XEN_NETIF_GSO_TYPE_TCPV4
        );
        assert_eq!(
            u32::from(XEN_NETIF_GSO_TYPE_TCPV6),
            c::XEN_NETIF_GSO_TYPE_TCPV6
        );
        assert_eq!(XEN_NETIF_NR_SLOTS_MIN as u32, c::XEN_NETIF_NR_SLOTS_MIN);
    }

    #[test]
    fn ctrl_constants_match_netif_h() {
        for (ours, theirs) in [
            (XEN_NETIF_CTRL_TYPE_INVALID, c::XEN_NETIF_CTRL_TYPE_INVALID),
            (
                XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
                c::XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
            ),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
                c::XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
            ),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
                c::XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            ),
            (
                XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
                c::XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
            ),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
                c::XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
            ),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
                c::XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            ),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
                c::XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
            ),
            (
                XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
                c::XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
            ),
            (
                XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
                c::XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
            ),
            (
                XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
                c::XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
            ),
        ] {
            assert_eq!(u32::from(ours), theirs);
        }
        assert_eq!(
            XEN_NETIF_CTRL_STATUS_SUCCESS,
            c::XEN_NETIF_CTRL_STATUS_SUCCESS
        );
        assert_eq!(
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
            c::XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED
        );
        assert_eq!(
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
            c::XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER
        );
        assert_eq!(
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
            c::XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_ALGORITHM_NONE,
            c::XEN_NETIF_CTRL_HASH_ALGORITHM_NONE
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
            c::XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_TYPE_IPV4,
            c::XEN_NETIF_CTRL_HASH_TYPE_IPV4
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
            c::XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_TYPE_IPV6,
            c::XEN_NETIF_CTRL_HASH_TYPE_IPV6
        );
        assert_eq!(
            XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
            c::XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP
        );
    }

    #[test]
    fn response_status_values_match_header() {
        assert_eq!(i32::from(XEN_NETIF_RSP_DROPPED), c::NETIF_RSP_DROPPED);
        assert_eq!(i32::from(XEN_NETIF_RSP_ERROR), c::NETIF_RSP_ERROR);
        assert_eq!(i32::from(XEN_NETIF_RSP_OKAY), c::NETIF_RSP_OKAY as i32);
        assert_eq!(i32::from(XEN_NETIF_RSP_NULL), c::NETIF_RSP_NULL as i32);
    }

    #[test]
    fn byte_fixtures_round_trip() {
        let tx = TxRequest {
            gref: 0x0102_0304,
            offset: 0x0506,
            flags: NETTXF_MORE_DATA | NETTXF_CSUM_BLANK,
            id: 0x0a0b,
            size: 1514,
        };
        let b = [
            0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0x05, 0x00, 0x0b, 0x0a, 0xea, 0x05,
        ];
        assert_eq!(tx.to_bytes(), b);
        assert_eq!(TxRequest::from_bytes(b), tx);
        let rsp = TxResponse {
            id: 7,
            status: XEN_NETIF_RSP_ERROR,
        };
        assert_eq!(rsp.to_bytes(), [7, 0, 0xff, 0xff]);
        let rx = RxRequest {
            id: 3,
            pad: 0,
            gref: 99,
        };
        assert_eq!(rx.to_bytes(), [3, 0, 0, 0, 99, 0, 0, 0]);
        let rr = RxResponse {
            id: 1,
            offset: 0,
            flags: NETRXF_MORE_DATA,
            status: 4096,
        };
        assert_eq!(rr.to_bytes(), [1, 0, 0, 0, 4, 0, 0, 0x10]);
        assert_eq!(RxResponse::from_bytes(rr.to_bytes()), rr);
        let g = ExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV6, true);
        assert_eq!(g.to_bytes(), [1, 1, 0xa8, 0x05, 2, 0, 0, 0]);
        assert_eq!(
            g.as_gso(),
            GsoExtra {
                size: 1448,
                gso_type: 2,
                features: 0
            }
        );
        assert_eq!(ExtraInfo::from_tx_slot(&g.to_tx_slot()), g);
        assert_eq!(ExtraInfo::from_rx_slot(&g.to_rx_slot()), g);
        let m = ExtraInfo::mcast(
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
            [1, 0, 0x5e, 0, 0, 0xfb],
            false,
        );
        assert_eq!(m.to_bytes(), [2, 0, 1, 0, 0x5e, 0, 0, 0xfb]);
        let c = CtrlRequest {
            id: 1,
            ty: 3,
            data: [5, 6, 7],
        };
        assert_eq!(CtrlRequest::from_bytes(c.to_bytes()), c);
        assert_eq!(&c.to_bytes()[..8], &[1, 0, 3, 0, 5, 0, 0, 0]);
        let cr = CtrlResponse {
            id: 1,
            ty: 3,
            status: 2,
            data: 40,
        };
        assert_eq!(CtrlResponse::from_bytes(cr.to_bytes()), cr);
    }

    /// The to_bytes images equal the in-memory representation (little-endian host).
    #[test]
    fn wire_image_is_memory_image() {
        let tx = TxRequest {
            gref: 1,
            offset: 2,
            flags: 3,
            id: 4,
            size: 5,
        };
        // SAFETY: TxRequest is repr(C) plain integers without padding (12 bytes, checked
        // above), so viewing it as bytes is sound.
        let mem: [u8; 12] = unsafe { std::mem::transmute(tx) };
        assert_eq!(mem, tx.to_bytes());
    }
}
