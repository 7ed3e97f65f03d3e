//! TensorBoard event files, written directly (no TensorFlow, no protobuf crate): a file of
//! TFRecords, each an `Event` message. The first event carries the file version; each
//! scalar is an `Event { wall_time, step, summary { value { tag, simple_value } } }`.
//!
//! Record framing (TFRecord): little-endian u64 length, masked CRC-32C of those 8 bytes,
//! the payload, masked CRC-32C of the payload. Scalars are stored as f32 (`simple_value`),
//! as TensorBoard plots them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// An open event file that scalars are appended to.
#[derive(Debug)]
pub struct EventFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFile {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>.<suffix>` (TensorBoard reads
    /// every file whose name holds `tfevents`) and writes the version event.
    pub fn create(dir: &Path, suffix: &str) -> Result<EventFile> {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io("creating", dir, e))?;
        let now = wall_time();
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{suffix}",
            now as u64,
            crate::atomic::host(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| CoreError::io("creating", &path, e))?;
        let mut ev = EventFile {
            path,
            out: BufWriter::new(file),
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, now);
        put_bytes(&mut event, 3, b"brain.Event:2");
        ev.record(&event)?;
        ev.flush()?;
        Ok(ev)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one scalar (buffered; see [`EventFile::flush`]).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64, wall_time: f64) -> Result<()> {
        let mut value_msg = Vec::new();
        put_bytes(&mut value_msg, 1, tag.as_bytes());
        put_float(&mut value_msg, 2, value as f32);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value_msg);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        put_varint_field(&mut event, 2, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// Writes buffered events to the file, so a reader sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| CoreError::io("writing", &self.path, e))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out
            .write_all(&frame)
            .map_err(|e| CoreError::io("writing", &self.path, e))
    }
}

/// Seconds since the Unix epoch.
pub fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(buf, u64::from(field) << 3);
    put_varint(buf, v);
}

fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(buf, (u64::from(field) << 3) | 1);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_float(buf: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(buf, (u64::from(field) << 3) | 5);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), bitwise over a table built at compile time.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // the check value of CRC-32C (RFC 3720 appendix B.4 lists the same polynomial)
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_frame_their_payload_with_checked_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let mut ev = EventFile::create(dir.path(), "t").unwrap();
        ev.scalar("a/b", 3, 0.5, 1.0).unwrap();
        ev.flush().unwrap();
        let bytes = std::fs::read(ev.path()).unwrap();
        let mut pos = 0;
        let mut payloads = Vec::new();
        while pos < bytes.len() {
            let len_bytes: [u8; 8] = bytes[pos..pos + 8].try_into().unwrap();
            let len = u64::from_le_bytes(len_bytes) as usize;
            let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(&len_bytes));
            let data = &bytes[pos + 12..pos + 12 + len];
            let dcrc =
                u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
            assert_eq!(dcrc, masked_crc(data));
            payloads.push(data.to_vec());
            pos += 16 + len;
        }
        assert_eq!(payloads.len(), 2);
        assert!(payloads[0].windows(13).any(|w| w == b"brain.Event:2"));
        // step 3 as field 2 varint, the tag inside the summary
        assert!(payloads[1].windows(2).any(|w| w == [0x10, 3]));
        assert!(payloads[1].windows(3).any(|w| w == b"a/b"));
        assert!(payloads[1].windows(4).any(|w| w == 0.5f32.to_le_bytes()));
    }
}
