//! `diffstream inspect`: the terminal client of the HTTP server. It prints an output's current
//! rows, one JSON object a line, and with `--follow` every change after them
//! (`{"time","diff","row"}`), like `psql` with SUBSCRIBE or `vector tap`. It speaks plain
//! HTTP/1.0 over a socket: one GET, the answer read to its end (or, following, event by event).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::InspectArgs;

/// Runs `diffstream inspect`.
pub fn main(args: &InspectArgs) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut out = out.lock();
    let Some(output) = &args.output else {
        let body = get_json(&args.connect, "/outputs")?;
        for o in body["outputs"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "{:<28} {:>10} rows  {:>10.1} changes/s  last time {}",
                o["name"].as_str().unwrap_or("?"),
                o["rows"],
                o["changes_per_sec"].as_f64().unwrap_or(0.0),
                o["last_time"]
            )?;
        }
        return Ok(());
    };
    let key = args.key.as_ref().map(|k| format!("?key={}", percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC)));
    if !args.follow {
        let body = get_json(&args.connect, &format!("/outputs/{output}{}", key.as_deref().unwrap_or("")))?;
        for row in body["rows"].as_array().into_iter().flatten() {
            writeln!(out, "{row}")?;
        }
        eprintln!("{output}: {} rows at time {}", body["rows"].as_array().map_or(0, Vec::len), body["time"]);
        return Ok(());
    }
    let mut events = connect(&args.connect, &format!("/outputs/{output}/subscribe{}", key.as_deref().unwrap_or("")))?;
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if events.read_line(&mut line)? == 0 {
            bail!("the engine closed the connection");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = l.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = l.strip_prefix("data: ") {
            data = d.to_string();
        } else if l.is_empty() && !event.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            match event.as_str() {
                "snapshot" => {
                    for row in v["rows"].as_array().into_iter().flatten() {
                        writeln!(out, "{row}")?;
                    }
                    eprintln!("{output}: {} rows at time {}; following", v["rows"].as_array().map_or(0, Vec::len), v["time"]);
                }
                "change" => writeln!(out, "{v}")?,
                "progress" if args.progress => writeln!(out, "{{\"progress\":{}}}", v["time"])?,
                "end" => {
                    eprintln!("the run ended at time {}", v["time"]);
                    return Ok(());
                }
                "dropped" => bail!("the engine dropped this subscription: {}", v["reason"]),
                _ => {}
            }
            out.flush()?;
            event.clear();
        }
    }
}

/// Sends `GET path` and returns the answer's body reader, past its headers.
fn connect(addr: &str, path: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr).with_context(|| {
        format!("cannot reach the engine at {addr}: start it with --http {addr} (the demo serves {})", crate::http::DEFAULT_ADDR)
    })?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code: u16 =
        status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("{addr} did not answer HTTP: {status:?}"))?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    if code != 200 {
        let mut body = String::new();
        reader.read_to_string(&mut body)?;
        let message =
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["error"].as_str().map(String::from)).unwrap_or(body);
        bail!("{message}");
    }
    Ok(reader)
}

fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut body = String::new();
    connect(addr, path)?.read_to_string(&mut body)?;
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}
