//! A loopback HTTP server that speaks the hub's resolve protocol for the tests: `HEAD` and
//! `GET /{org}/{name}/resolve/{rev}/{file}` with `ETag`, `X-Repo-Commit`, `Content-Length` and
//! byte ranges, serving the files of a fixture hub cache. It can misbehave on purpose: cut a
//! transfer mid-file, send an altered or truncated body, trickle bytes, or stall.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::Digest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send the full `Content-Length`, then half the body, then close the connection.
    Cut,
    /// Same length, one byte changed.
    Alter,
    /// A shorter body with a matching shorter `Content-Length` (HEAD still gives the full size).
    Truncate,
    /// Half the body, then nothing (the connection stays open).
    Stall,
    /// An HTTP error status instead of the file (500, 503, 429…).
    Status(u16),
}

struct Served {
    bytes: Arc<Vec<u8>>,
    etag: String,
    commit: String,
}

#[derive(Default)]
pub struct State {
    files: HashMap<(String, String), Served>,
    /// "METHOD /path" of every request, in order.
    pub log: Mutex<Vec<String>>,
    /// Faults for the next GETs of files whose name ends with the given suffix: (suffix, fault,
    /// how many more GETs get it).
    pub faults: Mutex<Vec<(String, Fault, usize)>>,
    /// Pause between 64 KiB chunks of a body, in ms (0 = full speed).
    pub trickle_ms: AtomicUsize,
    stop: AtomicBool,
}

pub struct HubServer {
    pub url: String,
    pub state: Arc<State>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl HubServer {
    /// Serves every file under `hub/models--*/snapshots/<rev>/`. JSON files get a git blob
    /// sha1 ETag (like the hub's regular files), the others their sha256 (like LFS files).
    pub fn serve(hub: &Path) -> Self {
        let mut files = HashMap::new();
        for repo_dir in std::fs::read_dir(hub).unwrap().map(|e| e.unwrap().path()) {
            let name = repo_dir.file_name().unwrap().to_string_lossy().to_string();
            let Some(id) = name.strip_prefix("models--") else {
                continue;
            };
            let repo = id.replacen("--", "/", 1);
            for snap in std::fs::read_dir(repo_dir.join("snapshots")).unwrap() {
                let snap = snap.unwrap().path();
                let commit = snap.file_name().unwrap().to_string_lossy().to_string();
                for f in std::fs::read_dir(&snap).unwrap() {
                    let p = f.unwrap().path();
                    let bytes = std::fs::read(&p).unwrap();
                    let file = p.file_name().unwrap().to_string_lossy().to_string();
                    let etag = if file.ends_with(".json") {
                        let mut h = sha1::Sha1::new();
                        h.update(format!("blob {}\0", bytes.len()).as_bytes());
                        h.update(&bytes);
                        hex(&h.finalize())
                    } else {
                        hex(&sha2::Sha256::digest(&bytes))
                    };
                    files.insert(
                        (repo.clone(), file),
                        Served {
                            bytes: Arc::new(bytes),
                            etag,
                            commit: commit.clone(),
                        },
                    );
                }
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            files,
            ..Default::default()
        });
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = Arc::clone(&st);
                    std::thread::spawn(move || handle(conn, &st));
                }
            }
        });
        Self {
            url: format!("http://{addr}"),
            state,
            thread: Some(thread),
            addr,
        }
    }

    pub fn fault(&self, suffix: &str, fault: Fault, times: usize) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push((suffix.to_string(), fault, times));
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("GET "))
            .count()
    }

    /// The bytes the server holds for `repo`/`file`.
    pub fn bytes(&self, repo: &str, file: &str) -> Arc<Vec<u8>> {
        Arc::clone(&self.state.files[&(repo.to_string(), file.to_string())].bytes)
    }

    /// Whether some file the server holds has exactly these bytes.
    pub fn serves_exactly(&self, bytes: &[u8]) -> bool {
        self.state
            .files
            .values()
            .any(|s| s.bytes.as_slice() == bytes)
    }

    /// Stops accepting connections; later requests are refused.
    pub fn stop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(conn: TcpStream, st: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    loop {
        // Request line and headers, waiting for them while the server runs.
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            if st.stop.load(Ordering::SeqCst) {
                return;
            }
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    let l = line.trim_end().to_string();
                    line.clear();
                    if l.is_empty() {
                        if lines.is_empty() {
                            continue;
                        }
                        break;
                    }
                    lines.push(l);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(_) => return,
            }
        }
        let mut parts = lines[0].split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        st.log.lock().unwrap().push(format!("{method} {path}"));
        let range = lines[1..].iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("range")
                .then(|| v.trim().to_string())
        });
        if !respond(&mut out, st, &method, &path, range.as_deref()) {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Writes one response; false when the connection must be closed.
fn respond(out: &mut TcpStream, st: &State, method: &str, path: &str, range: Option<&str>) -> bool {
    let target = path
        .trim_start_matches('/')
        .split_once("/resolve/")
        .and_then(|(repo, rest)| {
            let (_rev, file) = rest.split_once('/')?;
            Some((repo.to_string(), file.to_string()))
        });
    let Some(served) = target.as_ref().and_then(|k| st.files.get(k)) else {
        let body = b"Entry not found";
        let _ = write!(
            out,
            "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nX-Repo-Commit: {}\r\nContent-Length: {}\r\n\r\n",
            "0".repeat(40),
            body.len()
        );
        if method == "GET" {
            let _ = out.write_all(body);
        }
        return true;
    };
    let full = served.bytes.len();
    let head = format!(
        "ETag: \"{}\"\r\nX-Repo-Commit: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n",
        served.etag, served.commit
    );
    if method == "HEAD" {
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\n{head}Content-Length: {full}\r\n\r\n"
        );
        return true;
    }
    // GET: a fault queued for this file applies once per GET.
    let file = target.map(|t| t.1).unwrap_or_default();
    let fault = {
        let mut faults = st.faults.lock().unwrap();
        faults
            .iter_mut()
            .find(|(suffix, _, n)| *n > 0 && file.ends_with(suffix.as_str()))
            .map(|(_, f, n)| {
                *n -= 1;
                *f
            })
    };
    if let Some(Fault::Status(code)) = fault {
        let body = format!("error {code}");
        let _ = write!(
            out,
            "HTTP/1.1 {code} Error\r\nContent-Length: {}\r\nRetry-After: 0\r\n\r\n{body}",
            body.len()
        );
        return false;
    }
    let (start, end) = match range.and_then(parse_range) {
        Some((a, b)) => (a.min(full), b.map(|b| (b + 1).min(full)).unwrap_or(full)),
        None => (0, full),
    };
    let mut body = served.bytes[start..end].to_vec();
    let mut announced = body.len();
    match fault {
        Some(Fault::Alter) if !body.is_empty() => {
            let mid = body.len() / 2;
            body[mid] ^= 0x5a;
        }
        Some(Fault::Truncate) => {
            body.truncate(body.len() / 2);
            announced = body.len();
        }
        Some(Fault::Cut) | Some(Fault::Stall) => body.truncate(body.len() / 2),
        _ => {}
    }
    let status = if range.is_some() {
        format!(
            "206 Partial Content\r\nContent-Range: bytes {start}-{}/{full}",
            end.saturating_sub(1)
        )
    } else {
        "200 OK".to_string()
    };
    if write!(
        out,
        "HTTP/1.1 {status}\r\n{head}Content-Length: {announced}\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let trickle = st.trickle_ms.load(Ordering::SeqCst) as u64;
    for chunk in body.chunks(64 * 1024) {
        if st.stop.load(Ordering::SeqCst) || out.write_all(chunk).is_err() {
            return false;
        }
        let _ = out.flush();
        if trickle > 0 {
            std::thread::sleep(Duration::from_millis(trickle));
        }
    }
    match fault {
        Some(Fault::Cut) => false,
        Some(Fault::Stall) => {
            while !st.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }
        _ => true,
    }
}

fn parse_range(r: &str) -> Option<(usize, Option<usize>)> {
    let spec = r.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((a, b))
}
