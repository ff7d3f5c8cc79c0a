//! JSON Lines from a file, standard input or memory.
//!
//! Every worker reads the whole stream but keeps only the lines whose number falls to it
//! (`(line - 1) % peers == index`); scanning for newlines is cheap next to decoding, and it
//! needs no coordination. A batch is `batch` consecutive lines, so batch `k` covers the same
//! lines on any number of workers. Blank lines carry no record and are skipped.

use std::io::{self, BufRead};
use std::sync::Arc;

use dataflows::records::Position;

use super::{RawRecord, Source};

/// Bytes shared between workers, readable through `io::Cursor`.
#[derive(Clone, Debug)]
pub struct Shared(pub Arc<[u8]>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A source with nothing in it (standard input on the workers that do not read it).
pub struct Empty;

impl Source for Empty {
    fn next_batch(&mut self, _out: &mut Vec<RawRecord>) -> io::Result<bool> {
        Ok(false)
    }
}

/// One worker's share of a JSON Lines stream.
pub struct LineSource<R> {
    reader: R,
    line: u64,
    index: u64,
    peers: u64,
    batch: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> LineSource<R> {
    /// Reads `reader` as worker `index` of `peers`, `batch` lines per batch.
    pub fn new(reader: R, index: usize, peers: usize, batch: usize) -> Self {
        LineSource { reader, line: 0, index: index as u64, peers: peers as u64, batch, buf: Vec::new() }
    }
}

impl<R: BufRead> Source for LineSource<R> {
    fn next_batch(&mut self, out: &mut Vec<RawRecord>) -> io::Result<bool> {
        for _ in 0..self.batch {
            let mine = self.line % self.peers == self.index;
            let n = if mine {
                let mut bytes = Vec::new();
                let n = self.reader.read_until(b'\n', &mut bytes)?;
                if n > 0 {
                    self.line += 1;
                    trim_newline(&mut bytes);
                    if !bytes.iter().all(u8::is_ascii_whitespace) {
                        out.push(RawRecord { position: Position::Line(self.line), bytes });
                    }
                }
                n
            } else {
                self.buf.clear();
                let n = skip_line(&mut self.reader)?;
                self.line += u64::from(n > 0);
                n
            };
            if n == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Skips one line without copying it; returns the bytes skipped.
fn skip_line<R: BufRead>(r: &mut R) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let (done, used) = {
            let available = match r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (available.is_empty(), available.len()),
            }
        };
        r.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

fn trim_newline(bytes: &mut Vec<u8>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, index: usize, peers: usize, batch: usize) -> Vec<(Vec<(u64, String)>, bool)> {
        let mut s = LineSource::new(io::Cursor::new(text.as_bytes().to_vec()), index, peers, batch);
        let mut batches = Vec::new();
        loop {
            let mut out = Vec::new();
            let more = s.next_batch(&mut out).unwrap();
            let recs = out
                .into_iter()
                .map(|r| match r.position {
                    Position::Line(n) => (n, String::from_utf8(r.bytes).unwrap()),
                    p => panic!("unexpected position {p:?}"),
                })
                .collect();
            batches.push((recs, more));
            if !more {
                return batches;
            }
        }
    }

    #[test]
    fn shares_and_batches_do_not_depend_on_workers() {
        let text = "a\nb\r\n\nc\nd\ne";
        let one = read_all(text, 0, 1, 2);
        assert_eq!(one[0].0, vec![(1, "a".into()), (2, "b".into())]);
        assert_eq!(one[1].0, vec![(4, "c".into())]);
        assert_eq!(one[2].0, vec![(5, "d".into()), (6, "e".into())]);
        let w0 = read_all(text, 0, 2, 2);
        let w1 = read_all(text, 1, 2, 2);
        assert_eq!(w0[0].0, vec![(1, "a".into())]);
        assert_eq!(w1[0].0, vec![(2, "b".into())]);
        assert_eq!(w0[2].0, vec![(5, "d".into())]);
        assert_eq!(w1[2].0, vec![(6, "e".into())]);
    }
}
