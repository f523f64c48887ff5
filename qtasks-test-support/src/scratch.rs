//! Names, ports and folders no other test uses: tests run in parallel, in several processes,
//! against shared services.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A key prefix (app name) no other test uses, also across processes and runs.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!(
        "qt_{test}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port free on loopback now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a loopback port is free")
        .port()
}

/// A new folder of its own for `name` (a server's data, a test's files), under the system's
/// temporary folder.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("qtasks-tests")
        .join(unique_prefix(name));
    std::fs::create_dir_all(&dir).expect("the scratch folder is made");
    dir
}
