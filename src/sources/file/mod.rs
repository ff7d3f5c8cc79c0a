//! JSON Lines from a file, standard input or memory.
//!
//! Every worker reads the whole stream but keeps only the lines whose number falls to it
//! (`(line - 1) % peers == index`); scanning for newlines is cheap next to decoding, and it
//! needs no coordination. A batch is `batch` consecutive lines, so batch `k` covers the same
//! lines on any number of workers. Blank lines carry no record and are skipped; a UTF-8
//! byte-order mark at the start of the stream is not part of the first record.

use std::io::{self, BufRead};
use std::sync::Arc;

use dataflows::records::Position;

use super::{Batch, Record, Source};

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
    fn next_batch(&mut self, _each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch> {
        Ok(Batch { more: false, read_any: false })
    }
}

/// One worker's share of a JSON Lines stream.
pub struct LineSource<R> {
    reader: R,
    line: u64,
    index: u64,
    peers: u64,
    batch: usize,
    spill: Vec<u8>,
}

impl<R: BufRead> LineSource<R> {
    /// Reads `reader` as worker `index` of `peers`, `batch` lines per batch.
    pub fn new(reader: R, index: usize, peers: usize, batch: usize) -> Self {
        LineSource { reader, line: 0, index: index as u64, peers: peers as u64, batch, spill: Vec::new() }
    }
}

impl<R: BufRead> Source for LineSource<R> {
    fn next_batch(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<Batch> {
        let more = self.read(each)?;
        Ok(Batch { more, read_any: true })
    }
}

impl<R: BufRead> LineSource<R> {
    fn read(&mut self, each: &mut dyn FnMut(Record<'_>)) -> io::Result<bool> {
        for _ in 0..self.batch {
            let mine = self.line % self.peers == self.index;
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(false);
            }
            self.line += 1;
            let position = Position::Line(self.line);
            match memchr::memchr(b'\n', available) {
                // The usual case: the whole line is in the reader's buffer; lend it.
                Some(i) => {
                    if mine {
                        deliver(position, &available[..i], each);
                    }
                    self.reader.consume(i + 1);
                }
                // The line runs past the buffer: gather it.
                None => {
                    self.spill.clear();
                    self.reader.read_until(b'\n', &mut self.spill)?;
                    if mine {
                        let line = self.spill.strip_suffix(b"\n").unwrap_or(&self.spill);
                        deliver(position, line, each);
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Strips a `\r` (and a UTF-8 byte-order mark before the first line: editors on Windows write
/// one, and it is not part of the record), skips blank lines.
fn deliver(position: Position, line: &[u8], each: &mut dyn FnMut(Record<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = match position {
        Position::Line(1) => line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line),
        _ => line,
    };
    if !line.iter().all(u8::is_ascii_whitespace) {
        each(Record { position, bytes: line, key: None });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str, index: usize, peers: usize, batch: usize) -> Vec<(Vec<(u64, String)>, bool)> {
        // A tiny buffer, so that lines also run past it.
        let reader = io::BufReader::with_capacity(3, io::Cursor::new(text.as_bytes().to_vec()));
        let mut s = LineSource::new(reader, index, peers, batch);
        let mut batches = Vec::new();
        loop {
            let mut recs = Vec::new();
            let more = s
                .next_batch(&mut |r| match r.position {
                    Position::Line(n) => recs.push((n, String::from_utf8(r.bytes.to_vec()).unwrap())),
                    p => panic!("unexpected position {p:?}"),
                })
                .unwrap()
                .more;
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

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_skipped() {
        let one = read_all("\u{FEFF}{\"a\":1}\n\u{FEFF}b\n", 0, 1, 10);
        // only at the start of the stream: elsewhere it is the record's own bytes
        assert_eq!(one[0].0, vec![(1, "{\"a\":1}".into()), (2, "\u{FEFF}b".into())]);
    }
}
