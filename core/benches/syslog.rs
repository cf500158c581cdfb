//! Our syslog parser (`ferry_core::syslog`, used by the agent's syslog input and the processor's
//! `parse: syslog`) against `syslog_loose` (the parser Vector ships), in the same run: lines per
//! second on one core over the same RFC 3164 and RFC 5424 lines, whether the two agree on the
//! fields of each kind of line, and whether either panics on arbitrary input.
//!
//! `cargo bench -p ferry-core --bench syslog` (about 20 s). Prints Markdown tables.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

const LINES: usize = 500_000;
const ROUNDS: usize = 3;

/// One line of each shape ferry meets, the i-th variant.
fn line(i: usize) -> String {
    let (h, m, s) = (i / 3600 % 24, i / 60 % 60, i % 60);
    match i % 4 {
        // RFC 3164 with a PRI, as sent over the network.
        0 => format!(
            "<34>Oct 11 {h:02}:{m:02}:{s:02} mymachine su[{}]: 'su root' failed for lonvick on /dev/pts/{}",
            i % 30000,
            i % 9
        ),
        // RFC 3164 as rsyslog writes it to files: no PRI.
        1 => format!(
            "Nov 24 {h:02}:{m:02}:{s:02} web-{} sshd[{}]: Accepted publickey for alice from 10.0.{}.{} port {} ssh2",
            i % 7,
            i % 30000,
            i % 250,
            i % 200,
            1024 + i % 50000
        ),
        // RFC 5424 with structured data.
        2 => format!(
            "<165>1 2026-12-04T{h:02}:{m:02}:{s:02}.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"{}\"] An application event log entry",
            1000 + i % 9000
        ),
        // RFC 5424 without structured data.
        _ => format!(
            "<13>1 2026-12-04T{h:02}:{m:02}:{s:02}.000Z web-{} nginx {} access - GET /api/orders/{} 200",
            i % 7,
            i % 30000,
            i % 1000
        ),
    }
}

fn best_of(lines: &[String], f: impl Fn(&str) -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut n = 0usize;
        for l in lines {
            n = n.wrapping_add(f(black_box(l)));
        }
        black_box(n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    lines.len() as f64 / best
}

fn ours(l: &str) -> usize {
    match ferry_core::syslog::parse(l) {
        Ok(m) => m.message.len() + m.hostname.map_or(0, str::len) + m.appname.map_or(0, str::len),
        Err(_) => 0,
    }
}

fn loose(l: &str) -> usize {
    let m = syslog_loose::parse_message(l, syslog_loose::Variant::Either);
    m.msg.len()
        + m.hostname.map_or(0, str::len)
        + m.appname.map_or(0, str::len)
        + usize::from(m.timestamp.is_some())
}

/// The fields both give, as (hostname, appname, procid, msgid, message).
type Fields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

fn ours_fields(l: &str) -> Fields {
    let m = ferry_core::syslog::parse(l).unwrap();
    (
        m.hostname.map(str::to_owned),
        m.appname.map(str::to_owned),
        m.procid.map(str::to_owned),
        m.msgid.map(str::to_owned),
        m.message.to_owned(),
    )
}

fn loose_fields(l: &str) -> Fields {
    let m = syslog_loose::parse_message(l, syslog_loose::Variant::Either);
    (
        m.hostname.map(str::to_owned),
        m.appname.map(str::to_owned),
        m.procid.map(|p| p.to_string()),
        m.msgid.map(str::to_owned),
        m.msg.to_owned(),
    )
}

/// Mostly the characters syslog is made of, and the two bytes of an `é` (which alone are not UTF-8).
const ALPHABET: &[u8] = b"<>0123456789 :-[]=\"TZ.JanOctxy\xc3\xa9";

/// Arbitrary text (bytes made UTF-8), seeded: how many inputs make a parser panic.
fn panics(f: fn(&str) -> usize, seed: u64, n: usize) -> usize {
    let mut x = seed;
    let mut count = 0;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..n {
        let len = i % 64;
        let mut b = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.push(ALPHABET[(x % ALPHABET.len() as u64) as usize]);
        }
        let s = String::from_utf8_lossy(&b).into_owned();
        if std::panic::catch_unwind(|| f(&s)).is_err() {
            count += 1;
        }
    }
    std::panic::set_hook(prev);
    count
}

fn main() {
    let lines: Vec<String> = (0..LINES).map(line).collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    let a = best_of(&lines, ours);
    let b = best_of(&lines, loose);
    let mb = |r: f64| r * bytes as f64 / lines.len() as f64 / 1e6;
    println!(
        "{LINES} lines, {} bytes each on average (RFC 3164 with and without PRI, RFC 5424 with and without structured data), one thread, best of {ROUNDS}\n",
        bytes / LINES
    );
    println!("| parser | lines/s (one core) | MB/s | vs ours |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| ferry_core::syslog (ours) | {:.2} M | {:.0} | 1.00 |",
        a / 1e6,
        mb(a)
    );
    println!(
        "| syslog_loose 0.23 (`parse_message`, Variant::Either) | {:.2} M | {:.0} | {:.2} |",
        b / 1e6,
        mb(b),
        b / a
    );
    println!("\n| line shape | fields agree (hostname, appname, procid, msgid, message) |");
    println!("| --- | --- |");
    for (i, shape) in [
        "RFC 3164 with PRI",
        "RFC 3164 without PRI (rsyslog file)",
        "RFC 5424 with structured data",
        "RFC 5424 without structured data",
    ]
    .iter()
    .enumerate()
    {
        let l = line(i);
        let (x, y) = (ours_fields(&l), loose_fields(&l));
        if x == y {
            println!("| {shape} | yes |");
        } else {
            println!("| {shape} | no: ours {x:?}, syslog_loose {y:?} |");
        }
    }
    let n = 200_000;
    println!(
        "\npanics on {n} arbitrary inputs: ours {}, syslog_loose {}",
        panics(ours, 0x9e37_79b9_7f4a_7c15, n),
        panics(loose, 0x9e37_79b9_7f4a_7c15, n)
    );
}
