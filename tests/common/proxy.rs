//! A TCP forwarder that can be partitioned: one thread per connection and
//! direction, and [`Proxy::cut`] stops forwarding both ways while keeping
//! every socket open, as a network partition would (the client's requests
//! hang; nothing is refused or reset). [`Proxy::heal`] resumes, delivering
//! what was held. For tests only: no limits, no TLS, no cleverness.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

struct Shared {
    /// True while partitioned.
    cut: Mutex<bool>,
    healed: Condvar,
    stopping: AtomicBool,
    /// Every socket, to unblock the threads when the proxy is dropped.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Blocks while the proxy is cut.
    fn wait_while_cut(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        while *cut && !self.stopping.load(Ordering::SeqCst) {
            cut = self.healed.wait(cut).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn keep(&self, socket: &TcpStream) {
        if let Ok(clone) = socket.try_clone() {
            self.sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(clone);
        }
    }
}

/// A forwarder from a local port to `target`; stops (closing every
/// connection) on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`
    /// (`host:port`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            cut: Mutex::new(false),
            healed: Condvar::new(),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let target = target.to_string();
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                accepting.keep(&client);
                accepting.keep(&server);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let shared = accepting.clone();
                    std::thread::spawn(move || pump(from, to, &shared));
                }
            }
        });
        Proxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding both ways; connections stay open and new ones are
    /// accepted but get no answer.
    pub fn cut(&self) {
        *self.shared.cut.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Forwards again, held data first.
    pub fn heal(&self) {
        *self.shared.cut.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.shared.healed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.heal();
        for socket in self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wake the accepting thread so that it sees `stopping`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either side closes, holding data while cut.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        shared.wait_while_cut();
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Data read just before a cut is held until the heal.
        shared.wait_while_cut();
        if shared.stopping.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
