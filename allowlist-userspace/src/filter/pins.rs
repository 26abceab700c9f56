//! Where a filter lives on bpffs, so that it outlives the daemon: the pin paths, mounting
//! bpffs where the system has not, and removing it all again (`allowlistd uninstall`).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracing::info;

use allowlist_common::LAYOUT_VERSION;

use super::error::{io_error, FilterError, Result};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The paths of everything pinned for one filter instance: per layout (see
/// [`allowlist_common::LAYOUT_VERSION`]) the program and its maps, and beside them the
/// links, which outlive any one layout.
///
/// ```text
/// pin_path/vN/program   pin_path/vN/maps/NAME     this version's layout (N = LAYOUT_VERSION)
/// pin_path/program      pin_path/maps/NAME        layout 1 (before stamps)
/// pin_path/links/IFNAME pin_path/egress/IFNAME
/// ```
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Where the maps of this version's layout are pinned.
    pub fn maps(&self) -> PathBuf {
        self.layout_dir(LAYOUT_VERSION).join("maps")
    }
    pub(super) fn program(&self) -> PathBuf {
        self.layout_dir(LAYOUT_VERSION).join("program")
    }
    /// The directory of one layout's program and maps.
    pub(super) fn layout_dir(&self, version: u32) -> PathBuf {
        if version == 1 {
            self.root.clone()
        } else {
            self.root.join(format!("v{version}"))
        }
    }
    pub(super) fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub(super) fn link(&self, interface: &str) -> PathBuf {
        self.links().join(interface)
    }
    pub(super) fn egress_links(&self) -> PathBuf {
        self.root.join("egress")
    }
    pub(super) fn egress_link(&self, interface: &str) -> PathBuf {
        self.egress_links().join(interface)
    }
    /// Interfaces that have a pinned link, i.e. that this filter protects now.
    pub(super) fn pinned_interfaces(&self) -> Result<Vec<String>> {
        let dir = self.links();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(format!("listing {}", dir.display()))(error)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// Makes sure the pin directory exists on a bpffs (mounting one at /sys/fs/bpf if
/// needed), so that it can be locked before anything is loaded.
pub fn prepare_pin_root(pins: &Pins) -> Result<()> {
    ensure_bpffs(pins.root())?;
    fs::create_dir_all(pins.root()).map_err(io_error(format!("creating {}", pins.root().display())))
}

/// Mounts bpffs at `/sys/fs/bpf` when `pin_path` lives there and nothing is mounted yet
/// (systemd does this at boot; minimal systems and containers often don't).
pub(super) fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let mut probe = pin_path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(default_mount) && !is_bpffs(default_mount) {
        if !in_host_mount_namespace() {
            return Err(FilterError::Kernel {
                context: format!("pin_path {}", pin_path.display()),
                message: "no bpffs is mounted on /sys/fs/bpf in this mount namespace, and this daemon runs in a private one (e.g. under `ip netns exec`): a bpffs mounted here would vanish with the daemon, and the filter with it. Mount bpffs on /sys/fs/bpf in the host's namespace (`mount -t bpf bpf /sys/fs/bpf`), or start the daemon with `nsenter --net=/run/netns/NAME` instead".into(),
            });
        }
        fs::create_dir_all(default_mount).map_err(io_error("creating /sys/fs/bpf"))?;
        nix::mount::mount(
            Some("bpf"),
            default_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| FilterError::Io {
            context: "mounting bpffs on /sys/fs/bpf".into(),
            cause: errno.into(),
        })?;
        info!("mounted bpffs on /sys/fs/bpf");
        return Ok(());
    }
    Err(FilterError::Kernel {
        context: format!("pin_path {}", pin_path.display()),
        message: "is not on a BPF filesystem; use a path under /sys/fs/bpf or mount one with `mount -t bpf bpf DIR`".into(),
    })
}

/// Whether this process shares PID 1's mount namespace, where a mount outlives us.
fn in_host_mount_namespace() -> bool {
    match (
        fs::metadata("/proc/self/ns/mnt"),
        fs::metadata("/proc/1/ns/mnt"),
    ) {
        (Ok(ours), Ok(init)) => {
            use std::os::unix::fs::MetadataExt as _;
            ours.ino() == init.ino() && ours.dev() == init.dev()
        }
        _ => false,
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Detaches the filter everywhere and removes every pin: the documented way to remove
/// allowlist from a host. Pinned links are released by unlinking their pins; the egress
/// tc filters of kernels without TCX are removed by name.
///
/// The path may come straight from the command line, so only a directory on bpffs that
/// holds nothing but a filter's pins is removed: `--pin-path /sys/fs/bpf` by mistake
/// must not take other tools' pins with it.
pub fn uninstall(pins: &Pins) -> Result<Vec<String>> {
    let root = pins.root();
    if !root.exists() {
        return Ok(Vec::new());
    }
    check_removable(root)?;
    let interfaces = pins.pinned_interfaces()?;
    for interface in &interfaces {
        super::attach::detach_tc_filter(interface);
    }
    fs::remove_dir_all(root).map_err(io_error(format!("removing {}", root.display())))?;
    Ok(interfaces)
}

/// The names a filter's pin directory holds (see [`Pins`]), besides `vN` layout
/// directories.
const PIN_NAMES: [&str; 4] = ["program", "maps", "links", "egress"];

/// The layout version a directory named `vN` holds.
pub(super) fn layout_of_dir_name(name: &str) -> Option<u32> {
    let version: u32 = name.strip_prefix('v')?.parse().ok()?;
    // Only the name a daemon makes: not `v02` or `v+2`.
    (version > 1 && name == format!("v{version}")).then_some(version)
}

fn check_removable(root: &Path) -> Result<()> {
    let refuse = |message: String| FilterError::Kernel {
        context: format!("uninstalling from {}", root.display()),
        message,
    };
    if !is_bpffs(root) {
        return Err(refuse(
            "is not on a BPF filesystem, so it holds no allowlist pins; nothing was removed".into(),
        ));
    }
    let entries = fs::read_dir(root).map_err(io_error(format!("listing {}", root.display())))?;
    for entry in entries {
        let name = entry
            .map_err(io_error(format!("listing {}", root.display())))?
            .file_name();
        let ours = PIN_NAMES.iter().any(|ours| name == *ours)
            || name.to_str().and_then(layout_of_dir_name).is_some();
        if !ours {
            return Err(refuse(format!(
                "holds {:?}, which allowlist never pins, so this is not (only) an allowlist pin directory; nothing was removed. Pass the `pin_path` of the config (default /sys/fs/bpf/allowlist)",
                name
            )));
        }
    }
    Ok(())
}
