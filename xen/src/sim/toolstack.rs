//! What libxl does in xenstore when a vif is attached or detached, so the control plane
//! cannot tell the simulated host from a real one.
use crate::xenstore::{Access, Perm, XenStore};
use crate::XenError;

/// Optional backend keys of a vif.
#[derive(Clone, Debug, Default)]
pub struct VifOptions {
    /// `rate` = "<bytes>,<usec>".
    pub rate: Option<String>,
    pub bridge: Option<String>,
    /// Hotplug script name (libxl's default is "vif-bridge").
    pub script: Option<String>,
}

pub fn frontend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vif/{devid}")
}

pub fn backend_path(backend_dom: u16, domid: u16, devid: u32) -> String {
    format!("/local/domain/{backend_dom}/backend/vif/{domid}/{devid}")
}

/// Creates the frontend and backend directories of vif `devid` of `domid` in one
/// transaction, with libxl's keys and permissions: the frontend owns its directory (the
/// backend may read it), the backend domain owns its directory (the frontend may read it).
pub fn add_vif(
    xs: &XenStore,
    backend_dom: u16,
    domid: u16,
    devid: u32,
    mac: &str,
    opts: &VifOptions,
) -> Result<(), XenError> {
    let fe = frontend_path(domid, devid);
    let be = backend_path(backend_dom, domid, devid);
    xs.transaction(20, |t| {
        xs.rm(t, &fe)?;
        xs.rm(t, &be)?;
        xs.mkdir(t, &fe)?;
        xs.set_perms(
            t,
            &fe,
            &[
                Perm::new(domid, Access::None),
                Perm::new(backend_dom, Access::Read),
            ],
        )?;
        xs.mkdir(t, &be)?;
        xs.set_perms(
            t,
            &be,
            &[
                Perm::new(backend_dom, Access::None),
                Perm::new(domid, Access::Read),
            ],
        )?;
        for (k, v) in [
            ("backend", be.as_str()),
            ("backend-id", &backend_dom.to_string()),
            ("state", "1"),
            ("handle", &devid.to_string()),
            ("mac", mac),
        ] {
            xs.write(t, &format!("{fe}/{k}"), v)?;
        }
        let script = opts.script.clone().unwrap_or_else(|| "vif-bridge".into());
        for (k, v) in [
            ("frontend", fe.as_str()),
            ("frontend-id", &domid.to_string()),
            ("online", "1"),
            ("state", "1"),
            ("script", &script),
            ("mac", mac),
            ("handle", &devid.to_string()),
            ("type", "vif"),
        ] {
            xs.write(t, &format!("{be}/{k}"), v)?;
        }
        if let Some(r) = &opts.rate {
            xs.write(t, &format!("{be}/rate"), r)?;
        }
        if let Some(b) = &opts.bridge {
            xs.write(t, &format!("{be}/bridge"), b)?;
        }
        Ok(())
    })
}

/// libxl's detach request: `online` = 0 and backend state Closing (5). The backend is
/// expected to reach Closed (6); then call [`remove_vif`].
pub fn request_detach(
    xs: &XenStore,
    backend_dom: u16,
    domid: u16,
    devid: u32,
) -> Result<(), XenError> {
    let be = backend_path(backend_dom, domid, devid);
    xs.transaction(20, |t| {
        xs.write(t, &format!("{be}/online"), "0")?;
        xs.write(t, &format!("{be}/state"), "5")?;
        Ok(())
    })
}

/// Removes both directories of the vif (libxl's last step of a detach).
pub fn remove_vif(xs: &XenStore, backend_dom: u16, domid: u16, devid: u32) -> Result<(), XenError> {
    let fe = frontend_path(domid, devid);
    let be = backend_path(backend_dom, domid, devid);
    xs.transaction(20, |t| {
        xs.rm(t, &fe)?;
        xs.rm(t, &be)?;
        Ok(())
    })
}
