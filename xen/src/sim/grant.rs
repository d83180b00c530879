//! Guest memory and grant tables of the simulated host, and the backend's grant copy and
//! grant map over them with Xen's checks.
//!
//! Per domain D under the sim root: `dom<D>/memory` (RAM: frame f at byte f*4096) and
//! `dom<D>/grant-table` (Xen's `grant_entry_v1` array: u16 flags, u16 domid, u32 frame,
//! little endian). The backend touches guest memory only after checking the entry the way
//! Xen's `acquire_grant_for_copy`/`map_grant_ref` do, and reads each entry once (one 8-byte
//! atomic load), so a revoked grant fails from that moment on.
use super::evtchn::PortTable;
use super::shm::ShmFile;
use super::SimLayout;
use crate::iface::{gntst, CopyDir, CopyOp, GrantCopy, GrantMap, Mapping};
use crate::XenError;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub const PAGE: usize = 4096;
pub const GTF_PERMIT_ACCESS: u16 = 1;
pub const GTF_TYPE_MASK: u16 = 3;
pub const GTF_READONLY: u16 = 4;

/// One domain's RAM and grant table, mapped: the *guest's own* view of its memory (a
/// simulated guest writes its RAM and grant entries through it). The backend never uses it
/// directly: it goes through [`SimGrant`], which checks every access like Xen does.
pub struct DomainMem {
    ram: ShmFile,
    gnttab: ShmFile,
    /// The domain's event-channel table, whose header holds the domain's life state.
    ports: PortTable,
    ram_path: PathBuf,
}

impl DomainMem {
    /// Maps an existing domain's RAM and grant table (what a simulated guest does).
    pub fn open(layout: &SimLayout, domid: u16) -> Result<DomainMem, XenError> {
        open_domain(layout, domid)
    }

    /// Whether the domain is running (created and not yet destroyed by the sim host).
    pub fn is_alive(&self) -> bool {
        self.ports.is_alive()
    }

    /// Copies `data` into guest RAM at (frame, offset) — the guest writing its own memory.
    pub fn write_frame(&self, frame: u32, offset: usize, data: &[u8]) -> Result<(), XenError> {
        let at = self.ram_range(frame, offset, data.len())?;
        // SAFETY: `at..at+len` is inside the RAM mapping (checked); raw copy, no references.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ram.as_ptr().add(at), data.len())
        };
        Ok(())
    }

    /// Copies `len` bytes of guest RAM at (frame, offset) out.
    pub fn read_frame(&self, frame: u32, offset: usize, len: usize) -> Result<Vec<u8>, XenError> {
        let at = self.ram_range(frame, offset, len)?;
        let mut v = vec![0u8; len];
        // SAFETY: as in write_frame.
        unsafe { std::ptr::copy_nonoverlapping(self.ram.as_ptr().add(at), v.as_mut_ptr(), len) };
        Ok(v)
    }

    /// Pointer to the start of `frame` in RAM (for a guest placing rings there).
    pub fn frame_ptr(&self, frame: u32) -> Option<*mut u8> {
        // SAFETY: frame < frames(), so the page lies inside the mapping.
        (frame < self.frames()).then(|| unsafe { self.ram.as_ptr().add(frame as usize * PAGE) })
    }

    fn ram_range(&self, frame: u32, offset: usize, len: usize) -> Result<usize, XenError> {
        if frame >= self.frames() || offset + len > PAGE {
            return Err(XenError::Invalid(format!(
                "frame {frame} offset {offset} len {len} outside guest RAM pages"
            )));
        }
        Ok(frame as usize * PAGE + offset)
    }

    pub fn frames(&self) -> u32 {
        (self.ram.len() / PAGE) as u32
    }
    pub fn grant_entries(&self) -> u32 {
        (self.gnttab.len() / 8) as u32
    }

    /// The grant entry `gref` as (flags, domid, frame), read with one atomic load.
    pub fn entry(&self, gref: u32) -> Option<(u16, u16, u32)> {
        if gref >= self.grant_entries() {
            return None;
        }
        let v = self
            .gnttab
            .u64_at(gref as usize * 8)
            .load(Ordering::Acquire);
        Some((v as u16, (v >> 16) as u16, (v >> 32) as u32))
    }

    /// Writes an entry as a guest does: frame and domid first, then the flags that make it
    /// valid (one 8-byte release store here, which is stronger).
    pub fn set_entry(&self, gref: u32, flags: u16, domid: u16, frame: u32) -> Result<(), XenError> {
        if gref >= self.grant_entries() {
            return Err(XenError::Invalid(format!(
                "gref {gref} beyond the grant table"
            )));
        }
        let v = u64::from(flags) | (u64::from(domid) << 16) | (u64::from(frame) << 32);
        self.gnttab
            .u64_at(gref as usize * 8)
            .store(v, Ordering::Release);
        Ok(())
    }

    /// Pointer to `len` bytes at (frame, offset) of guest RAM, if inside RAM and a page.
    fn ram_ptr(&self, frame: u32, offset: u16, len: u16) -> Option<*mut u8> {
        if frame >= self.frames() || usize::from(offset) + usize::from(len) > PAGE {
            return None;
        }
        // SAFETY: frame*PAGE + offset + len <= ram.len(), checked just above.
        Some(unsafe {
            self.ram
                .as_ptr()
                .add(frame as usize * PAGE + usize::from(offset))
        })
    }
}

/// Opens and caches the domains' memory as the backend needs them.
#[derive(Clone)]
pub struct DomainTable {
    layout: SimLayout,
    doms: Arc<Mutex<HashMap<u16, Arc<DomainMem>>>>,
}

impl DomainTable {
    pub fn new(layout: SimLayout) -> Self {
        DomainTable {
            layout,
            doms: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The domain's memory, or None if it does not exist or is being destroyed (Xen:
    /// bad_domain). A cached mapping of a destroyed domain is dropped, so a new domain with
    /// the same id is found afresh.
    pub fn get(&self, domid: u16) -> Option<Arc<DomainMem>> {
        let mut g = self.doms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = g.get(&domid) {
            if d.is_alive() {
                return Some(d.clone());
            }
            g.remove(&domid);
        }
        let d = Arc::new(open_domain(&self.layout, domid).ok()?);
        if !d.is_alive() {
            return None;
        }
        g.insert(domid, d.clone());
        Some(d)
    }

    /// Forgets a domain (after it is destroyed), so a new one with that id is reopened.
    pub fn forget(&self, domid: u16) {
        self.doms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domid);
    }
}

pub(crate) fn open_domain(layout: &SimLayout, domid: u16) -> Result<DomainMem, XenError> {
    let ram_path = layout.dom_dir(domid).join("memory");
    let ram = ShmFile::open(&ram_path, None)?;
    let gnttab = ShmFile::open(&layout.dom_dir(domid).join("grant-table"), None)?;
    if ram.len() % PAGE != 0 || gnttab.len() % 8 != 0 {
        return Err(XenError::Sim(format!(
            "dom{domid}: memory ({} bytes) or grant table ({} bytes) ends in a partial entry",
            ram.len(),
            gnttab.len()
        )));
    }
    Ok(DomainMem {
        ram,
        gnttab,
        ports: PortTable::open(layout, domid)?,
        ram_path,
    })
}

/// Largest guest RAM the sim creates (2^20 frames, 4 GiB).
pub const MAX_FRAMES: u32 = 1 << 20;
/// Largest grant table the sim creates (2^20 entries).
pub const MAX_GRANTS: u32 = 1 << 20;

/// Creates domain `domid`'s files: RAM, grant table and event-channel table, the latter
/// with the domain still "being built" (the host marks it running when it is complete).
pub(crate) fn create_domain(
    layout: &SimLayout,
    domid: u16,
    frames: u32,
    grants: u32,
) -> Result<PortTable, XenError> {
    if !(1..=MAX_FRAMES).contains(&frames) || !(1..=MAX_GRANTS).contains(&grants) {
        return Err(XenError::Invalid(format!(
            "dom{domid}: {frames} frames, {grants} grant entries \
             (allowed 1..={MAX_FRAMES}, 1..={MAX_GRANTS})"
        )));
    }
    let dir = layout.dom_dir(domid);
    // create_dir, not _all: fails if the domain exists (two creators can't share it).
    std::fs::create_dir(&dir).map_err(|e| XenError::io(format!("mkdir {}", dir.display()), e))?;
    ShmFile::create(&dir.join("memory"), frames as usize * PAGE)?;
    ShmFile::create(&dir.join("grant-table"), grants as usize * 8)?;
    super::evtchn::OwnerTable::create(layout, domid)?;
    PortTable::create(layout, domid)
}

/// Checks an entry for use by `local_dom`, as Xen 4.17 does (`acquire_grant_for_copy`,
/// `map_grant_ref`): a gref beyond the table is `bad_gntref`; a type other than
/// permit_access, another domid, or a write to a read-only grant is `general_error` (Xen's
/// `_set_status_v1`; not permission_denied); a frame outside the guest's RAM is `bad_page`
/// (Xen's `get_paged_frame`). The entry is read once (one 8-byte atomic load).
fn check(d: &DomainMem, gref: u32, local_dom: u16, write: bool) -> Result<u32, i16> {
    let (flags, domid, frame) = d.entry(gref).ok_or(gntst::BAD_GNTREF)?;
    if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != local_dom {
        return Err(gntst::GENERAL_ERROR);
    }
    if write && flags & GTF_READONLY != 0 {
        return Err(gntst::GENERAL_ERROR);
    }
    if frame >= d.frames() {
        return Err(gntst::BAD_PAGE);
    }
    Ok(frame)
}

/// The backend's grant operations on the simulated host.
pub struct SimGrant {
    table: DomainTable,
    local_dom: u16,
}

impl SimGrant {
    pub fn new(table: DomainTable, local_dom: u16) -> Self {
        SimGrant { table, local_dom }
    }

    /// In Xen 4.17's order (`gnttab_copy_one`): find the domain (bad_domain), acquire the
    /// grant (bad_gntref, general_error, bad_page), then check the range (bad_copy_arg, in
    /// `gnttab_copy_buf`). `d` is the op's domain as looked up for this batch.
    fn copy_one(&self, d: Option<&DomainMem>, op: &CopyOp) -> Result<(), i16> {
        let d = d.ok_or(gntst::BAD_DOMAIN)?;
        let frame = check(d, op.gref, self.local_dom, op.dir == CopyDir::ToForeign)?;
        let guest = d
            .ram_ptr(frame, op.offset, op.len)
            .ok_or(gntst::BAD_COPY_ARG)?;
        if op.len == 0 {
            return Ok(());
        }
        if op.local.is_null() {
            return Err(gntst::BAD_VIRT_ADDR);
        }
        // SAFETY: `guest` is inside the domain's RAM mapping (checked); `op.local` is valid
        // for `len` bytes by the GrantCopy::copy contract. The regions can't overlap (guest
        // RAM is only ever mapped by the sim). Concurrent guest writes make the bytes
        // unspecified, as on Xen, but never unsafe (raw copies, no references).
        unsafe {
            match op.dir {
                CopyDir::FromForeign => {
                    std::ptr::copy_nonoverlapping(guest, op.local, usize::from(op.len))
                }
                CopyDir::ToForeign => {
                    std::ptr::copy_nonoverlapping(op.local as *const u8, guest, usize::from(op.len))
                }
            }
        }
        Ok(())
    }
}

impl GrantCopy for SimGrant {
    unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        // Like Xen's `gnttab_copy` (which keeps the domain locked across consecutive ops
        // naming it), the domain is looked up once per run of ops with the same domid, not
        // per op: a batch holds many ops of few guests.
        let mut cur: Option<(u16, Option<Arc<DomainMem>>)> = None;
        for op in ops.iter_mut() {
            let d = match &cur {
                Some((id, d)) if *id == op.domid => d.as_deref(),
                _ => cur
                    .insert((op.domid, self.table.get(op.domid)))
                    .1
                    .as_deref(),
            };
            op.status = match self.copy_one(d, op) {
                Ok(()) => gntst::OKAY,
                Err(s) => s,
            };
        }
        Ok(())
    }
}

/// Foreign pages mapped contiguously; unmapped on drop.
pub struct SimMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain shared mapping, accessed through raw pointers only.
unsafe impl Send for SimMapping {}
// SAFETY: as above.
unsafe impl Sync for SimMapping {}

impl Mapping for SimMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        // SAFETY: the reservation made in map(), unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl GrantMap for SimGrant {
    type Mapping = SimMapping;

    fn map(&self, domid: u16, grefs: &[u32], writable: bool) -> Result<SimMapping, XenError> {
        let fail = |status| XenError::Map {
            domid,
            grefs: grefs.to_vec(),
            status,
        };
        if grefs.is_empty() || grefs.len() > 256 {
            return Err(fail(gntst::GENERAL_ERROR));
        }
        let d = self
            .table
            .get(domid)
            .ok_or_else(|| fail(gntst::BAD_DOMAIN))?;
        let mut frames = Vec::with_capacity(grefs.len());
        for &g in grefs {
            frames.push(check(&d, g, self.local_dom, writable).map_err(fail)?);
        }
        let len = grefs.len() * PAGE;
        // Reserve a contiguous range, then place each granted frame over it.
        // SAFETY: a fresh anonymous reservation; no existing memory affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(XenError::io(
                "mmap reservation",
                std::io::Error::last_os_error(),
            ));
        }
        let m = SimMapping {
            ptr: base as *mut u8,
            len,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&d.ram_path)
            .map_err(|e| XenError::io("open guest memory", e))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        for (i, f) in frames.iter().enumerate() {
            // SAFETY: MAP_FIXED over our own reservation (page i of it), backed by the
            // guest's RAM file at a frame inside it (checked).
            let p = unsafe {
                libc::mmap(
                    m.ptr.add(i * PAGE) as *mut libc::c_void,
                    PAGE,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    (*f as usize * PAGE) as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(XenError::io(
                    "mmap guest frame",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(m)
    }
}
