//! What the program asks of the machine: files written atomically, the allocator, memory
//! figures, cores and threads, the compute device, the app's cache folder. Everything here is
//! decided once, at the start of the program, or is a plain query.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a file so that a crash never leaves it half-written: a temporary file beside it is
/// written and synced, then renamed over it.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_beside(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A temporary name beside `path`, unique to this process and call, so that two writers of
/// the same file (threads or processes) never share a temp file.
pub fn temp_beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// A command whose output is piped into a program that stops reading (`| head`) ends quietly,
/// as command-line tools do, instead of failing on the write. Call first thing in `main`.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts; no
    // handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Keeps the buffers of a forward pass (up to 16 MiB each: an image's 257 x 4096 activations
/// are 4 MiB) in the heap once freed, for the next ones to reuse. glibc's default maps any
/// allocation above a threshold that starts at 128 KiB afresh and unmaps it when freed, so
/// every such buffer came back as new pages that the kernel zeroed and faulted in one at a
/// time (about 10 % of an f16 image encode's time in a profile; docs/performance.md). Called
/// once at the start of the program, before any other thread; heap above 32 MiB free is still
/// given back.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it is called before any other thread
    // of this program starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Hands the heap memory freed so far back to the system where the allocator keeps it
/// (glibc keeps most of a dropped model's weights, which would otherwise add to what the next
/// one allocates).
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; it touches no memory in
    // use and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process, bytes (Linux; None elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident memory of this process now, bytes (Linux; None elsewhere).
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// This machine's memory, bytes (Linux; None elsewhere).
pub fn total_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free space on the disk holding `path` (or its nearest existing parent), bytes (Unix; None
/// elsewhere or when the system does not say).
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut p = path;
        while !p.exists() {
            p = p.parent()?;
        }
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is a plain C struct, for which all-zero bytes are a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a statvfs the call fills.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// This machine's cores (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Threads to compute with in the app: every core but one, left to the UI (one on a single
/// core).
pub fn default_threads() -> usize {
    cores().saturating_sub(1).max(1)
}

/// The compute threads candle and rayon use from now on. Both read `RAYON_NUM_THREADS`, so
/// this sets it, which is only sound while no other thread runs: call it at the very start
/// of `main` (or a test process), never later. A number above the cores is cut to them; a
/// value already in the environment (the user's) wins when `requested` is None.
pub fn configure_threads(requested: Option<usize>) {
    let n = match requested {
        Some(n) => n.clamp(1, cores()),
        None => return,
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// Replaces a `RAYON_NUM_THREADS` that is not a number from 1 to 4 × the cores with the number
/// of cores, and says so on stderr. Call before any thread starts.
pub fn check_thread_variable() {
    let Some(v) = std::env::var_os("RAYON_NUM_THREADS") else {
        return;
    };
    let max = 4 * cores();
    let ok = v
        .to_str()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .is_some_and(|n| (1..=max).contains(&n));
    if !ok {
        eprintln!(
            "warning: RAYON_NUM_THREADS={} is not a thread count from 1 to {max}; using {}",
            v.to_string_lossy(),
            cores()
        );
        std::env::set_var("RAYON_NUM_THREADS", cores().to_string());
    }
}

/// The compute threads in use (candle's count).
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// The compute device of this build: CUDA or Metal when compiled in and present, else the CPU.
/// Returns the device and a label for the UI.
pub fn pick_device() -> (candle_core::Device, String) {
    #[cfg(feature = "cuda")]
    {
        match candle_core::Device::new_cuda(0) {
            Ok(d) => return (d, "CUDA".into()),
            Err(e) => tracing::warn!("CUDA unavailable ({e}); using the CPU"),
        }
    }
    #[cfg(feature = "metal")]
    {
        match candle_core::Device::new_metal(0) {
            Ok(d) => return (d, "Metal".into()),
            Err(e) => tracing::warn!("Metal unavailable ({e}); using the CPU"),
        }
    }
    (candle_core::Device::Cpu, "CPU".into())
}

/// The device label this build would use ("CUDA", "Metal" or "CPU"), before any device is made.
pub fn device_label() -> &'static str {
    if cfg!(feature = "cuda") {
        "CUDA"
    } else if cfg!(feature = "metal") {
        "Metal"
    } else {
        "CPU"
    }
}

/// The app's cache folder (converted weights, model caches): `FLAMINGO_CACHE_DIR`, else the
/// platform's cache folder (`$XDG_CACHE_HOME/flamingo` or `~/.cache/flamingo`,
/// `~/Library/Caches/flamingo`, `%LOCALAPPDATA%\flamingo\cache`).
pub fn app_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("FLAMINGO_CACHE_DIR") {
        return p;
    }
    if cfg!(target_os = "windows") {
        if let Some(p) = var("LOCALAPPDATA") {
            return p.join("flamingo").join("cache");
        }
    }
    let home = var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."));
    if cfg!(target_os = "macos") {
        return home.join("Library").join("Caches").join("flamingo");
    }
    var("XDG_CACHE_HOME")
        .unwrap_or_else(|| home.join(".cache"))
        .join("flamingo")
}
