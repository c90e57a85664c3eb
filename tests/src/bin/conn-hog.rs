//! `conn-hog`: test tooling that holds many connections to a Unix socket,
//! as a hostile client would, and reports which of them the server closed.
//!
//! ```text
//! conn-hog --socket PATH N
//! ```
//!
//! It connects N times (sending nothing), prints `{"connected": N}` and then
//! answers commands read from stdin, one per line, each with one JSON line:
//!
//! * `check`: without waiting, which connections the server has closed
//!   (`{"open": A, "closed": B}`). The caller makes sure the server has
//!   seen every connection first (a later connection of its own that was
//!   answered does: the server accepts in order).
//! * `wait SECS`: waits up to SECS seconds for every open connection to be
//!   closed by the server, then reports as `check` does, with `"seconds"`,
//!   how long the wait took.
//!
//! It exits at the end of stdin. Exit 1 if a connection cannot be made.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Whether the server closed `conn`: reads (and drops) whatever it sent;
/// end of stream or a reset means closed.
fn closed(conn: &mut UnixStream, timeout: Option<Duration>) -> bool {
    let mut buf = [0u8; 4096];
    let _ = conn.set_nonblocking(timeout.is_none());
    let _ = conn.set_read_timeout(timeout);
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn report(conns: &mut [Option<UnixStream>], wait: Option<Duration>) -> (usize, usize) {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut open = 0;
    for slot in conns.iter_mut() {
        let Some(conn) = slot else { continue };
        let timeout = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        if closed(conn, timeout) {
            *slot = None;
        } else {
            open += 1;
        }
    }
    (open, conns.len() - open)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, count) = match args.as_slice() {
        [flag, socket, n] if flag == "--socket" => match n.parse::<usize>() {
            Ok(n) => (socket.clone(), n),
            Err(_) => {
                eprintln!("conn-hog: {n:?} is not a number");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: conn-hog --socket PATH N");
            return ExitCode::from(2);
        }
    };
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        match UnixStream::connect(&socket) {
            Ok(conn) => conns.push(Some(conn)),
            Err(e) => {
                eprintln!("conn-hog: connection {i} to {socket}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{{\"connected\": {count}}}");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["check"] => {
                let (open, closed) = report(&mut conns, None);
                format!("{{\"open\": {open}, \"closed\": {closed}}}")
            }
            ["wait", secs] => {
                let Ok(secs) = secs.parse::<u64>() else {
                    eprintln!("conn-hog: {secs:?} is not a number");
                    return ExitCode::from(2);
                };
                let started = Instant::now();
                let (open, closed) = report(&mut conns, Some(Duration::from_secs(secs)));
                let seconds = started.elapsed().as_secs_f64();
                format!("{{\"open\": {open}, \"closed\": {closed}, \"seconds\": {seconds:.3}}}")
            }
            _ => {
                eprintln!("conn-hog: unknown command {line:?}");
                return ExitCode::from(2);
            }
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}
