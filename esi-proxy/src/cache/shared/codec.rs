//! The shared tier's value format: a versioned binary record of one stored response (status,
//! kept headers, body, TTL source, stored-at wall-clock time, TTL and stale windows, the header
//! names its key was computed from, its surrogate keys), its headers and body deflated when that
//! pays. Pure: no I/O.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::super::policy::TtlSource;

/// The record's first bytes.
const MAGIC: &[u8; 2] = b"EP";
/// The format this build writes and reads; any other is a miss. 2: surrogate keys added.
pub(super) const FORMAT: u8 = 2;
/// Flag bit: headers and body are deflated.
const DEFLATED: u8 = 1;
/// Most bytes a deflated record may inflate to: a bound against a corrupt or hostile value.
const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// One stored response as the shared tier keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Value {
    /// When it was stored, in milliseconds since the Unix epoch: every node computes the same
    /// age from it (clocks kept in step, as NTP does).
    pub(super) stored_at_ms: u64,
    /// TTL, stale-while-revalidate and stale-if-error windows.
    pub(super) times: [Duration; 3],
    pub(super) status: u16,
    pub(super) source: TtlSource,
    /// Every header name the key was computed from, sorted.
    pub(super) names: Vec<HeaderName>,
    /// The names the response's `Vary` listed.
    pub(super) vary: Vec<HeaderName>,
    /// Its surrogate keys.
    pub(super) tags: Vec<String>,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// Why a stored record could not be read; the lookup counts it and goes on as a miss.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum CodecError {
    #[error("not a record of this tier")]
    Magic,
    #[error("record format {0}, this build reads {FORMAT}")]
    Format(u8),
    #[error("record cut short")]
    Truncated,
    #[error("record holds an invalid {0}")]
    Invalid(&'static str),
    #[error("record does not inflate")]
    Inflate,
}

/// Reads a record front to back.
struct Reader<'a> {
    rest: &'a [u8],
}

// === impl Value ===

impl Value {
    /// The record of this value; headers and body are deflated when the body has at least
    /// `compress_min_bytes` and deflating makes the record smaller.
    pub(super) fn encode(&self, compress_min_bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        let flags_at = out.len();
        out.push(0);
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        for time in self.times {
            out.extend_from_slice(&millis(time).to_be_bytes());
        }
        out.extend_from_slice(&self.status.to_be_bytes());
        encode_source(&mut out, &self.source);
        for names in [&self.names, &self.vary] {
            put_u16(&mut out, names.len());
            for name in names {
                put_str(&mut out, name.as_str().as_bytes());
            }
        }
        put_u16(&mut out, self.tags.len());
        for tag in &self.tags {
            put_str(&mut out, tag.as_bytes());
        }
        let mut payload = Vec::with_capacity(32 * self.headers.len() + self.body.len());
        put_u16(&mut payload, self.headers.len());
        for (name, value) in &self.headers {
            put_str(&mut payload, name.as_str().as_bytes());
            put_str(&mut payload, value.as_bytes());
        }
        payload.extend_from_slice(&self.body);
        if self.body.len() >= compress_min_bytes {
            let mut deflate = DeflateEncoder::new(Vec::new(), Compression::fast());
            let packed = deflate
                .write_all(&payload)
                .and_then(|()| deflate.finish())
                .ok();
            if let Some(packed) = packed.filter(|p| p.len() < payload.len()) {
                out[flags_at] = DEFLATED;
                out.extend_from_slice(&packed);
                return out;
            }
        }
        out.extend_from_slice(&payload);
        out
    }

    /// The value of a record.
    ///
    /// # Errors
    /// [`CodecError`] when the record is not one this build writes, or is damaged.
    pub(super) fn decode(record: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader { rest: record };
        if r.take(2)? != MAGIC {
            return Err(CodecError::Magic);
        }
        let format = r.u8()?;
        if format != FORMAT {
            return Err(CodecError::Format(format));
        }
        let flags = r.u8()?;
        let stored_at_ms = r.u64()?;
        let times = [
            Duration::from_millis(r.u64()?),
            Duration::from_millis(r.u64()?),
            Duration::from_millis(r.u64()?),
        ];
        let status = u16::try_from(r.u16()?).map_err(|_| CodecError::Invalid("status"))?;
        let source = decode_source(&mut r)?;
        let names = r.names()?;
        let vary = r.names()?;
        let tags = (0..r.u16()?)
            .map(|_| {
                std::str::from_utf8(r.str()?)
                    .map(str::to_owned)
                    .map_err(|_| CodecError::Invalid("surrogate key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let inflated;
        let mut r = if flags & DEFLATED != 0 {
            let mut out = Vec::new();
            DeflateDecoder::new(r.rest)
                .take(MAX_INFLATED_BYTES)
                .read_to_end(&mut out)
                .map_err(|_| CodecError::Inflate)?;
            inflated = out;
            Reader { rest: &inflated }
        } else {
            r
        };
        let count = r.u16()?;
        let mut headers = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let name = HeaderName::from_bytes(r.str()?).map_err(|_| CodecError::Invalid("name"))?;
            let value =
                HeaderValue::from_bytes(r.str()?).map_err(|_| CodecError::Invalid("value"))?;
            headers.append(name, value);
        }
        Ok(Self {
            stored_at_ms,
            times,
            status,
            source,
            names,
            vary,
            tags,
            headers,
            body: Bytes::copy_from_slice(r.rest),
        })
    }
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, CodecError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(b);
        Ok(u64::from_be_bytes(bytes))
    }

    /// A string of at most 4 GiB, its length first.
    fn str(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn names(&mut self) -> Result<Vec<HeaderName>, CodecError> {
        let count = self.u16()?;
        (0..count)
            .map(|_| HeaderName::from_bytes(self.str()?).map_err(|_| CodecError::Invalid("name")))
            .collect()
    }
}

// === helpers ===

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// A count of at most `u16::MAX` (the store keeps far fewer headers and names than that).
fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_source(out: &mut Vec<u8>, source: &TtlSource) {
    match source {
        TtlSource::Default => out.push(0),
        TtlSource::MaxAge => out.push(1),
        TtlSource::SMaxAge => out.push(2),
        TtlSource::SurrogateControl => out.push(3),
        TtlSource::Include => out.push(5),
        TtlSource::Rule(index, pattern) => {
            out.push(4);
            out.extend_from_slice(&u32::try_from(*index).unwrap_or(u32::MAX).to_be_bytes());
            put_str(out, pattern.as_bytes());
        }
    }
}

fn decode_source(r: &mut Reader<'_>) -> Result<TtlSource, CodecError> {
    Ok(match r.u8()? {
        0 => TtlSource::Default,
        1 => TtlSource::MaxAge,
        2 => TtlSource::SMaxAge,
        3 => TtlSource::SurrogateControl,
        5 => TtlSource::Include,
        4 => {
            let index = r.u32()? as usize;
            let pattern = std::str::from_utf8(r.str()?)
                .map_err(|_| CodecError::Invalid("rule"))?
                .to_owned();
            TtlSource::Rule(index, pattern)
        }
        _ => return Err(CodecError::Invalid("TTL source")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::headers;

    fn value(body: &[u8], source: TtlSource) -> Value {
        Value {
            stored_at_ms: 1_700_000_000_123,
            times: [
                Duration::from_secs(60),
                Duration::from_millis(1500),
                Duration::from_secs(3600),
            ],
            status: 203,
            source,
            names: vec![
                HeaderName::from_static("accept-language"),
                HeaderName::from_static("x-forwarded-host"),
            ],
            vary: vec![HeaderName::from_static("accept-language")],
            tags: vec!["product-4410".into(), "prices".into()],
            headers: headers(&[
                ("content-type", "text/html"),
                ("set-cookie-like", "a"),
                ("set-cookie-like", "b"),
            ]),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn values_round_trip_plain_and_deflated() {
        let long = "<p>the same words again</p>".repeat(200);
        let cases: [(&[u8], TtlSource, usize, bool); 5] = [
            (b"", TtlSource::Default, 1024, false),
            (b"<b>hi</b>", TtlSource::MaxAge, 1024, false),
            (long.as_bytes(), TtlSource::SMaxAge, 1024, true),
            (
                long.as_bytes(),
                TtlSource::SurrogateControl,
                usize::MAX,
                false,
            ),
            (long.as_bytes(), TtlSource::Rule(3, "/a/*".into()), 0, true),
        ];
        for (body, source, min, deflated) in cases {
            let value = value(body, source);
            let record = value.encode(min);
            assert_eq!(record[..3], [b'E', b'P', FORMAT]);
            assert_eq!(record[3] == DEFLATED, deflated, "{:?}", value.source);
            if deflated {
                assert!(record.len() < body.len() / 4, "deflating paid");
            }
            assert_eq!(Value::decode(&record).as_ref(), Ok(&value));
        }
    }

    #[test]
    fn incompressible_bodies_stay_plain() {
        // Bytes with no repetition deflate to more than they are.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let body: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: no run and no repeat deflate could use.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_be_bytes()[0]
            })
            .collect();
        let record = value(&body, TtlSource::Default).encode(0);
        assert_eq!(record[3], 0);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let good = value(b"<b>hi</b>", TtlSource::Rule(1, "x".into())).encode(1024);
        let mut other_format = good.clone();
        other_format[2] = FORMAT + 1;
        let mut bad_flag = good.clone();
        bad_flag[3] = DEFLATED;
        let cases: [(&[u8], CodecError); 5] = [
            (b"", CodecError::Truncated),
            (b"XX\x01\x00", CodecError::Magic),
            (&other_format, CodecError::Format(FORMAT + 1)),
            (&good[..30], CodecError::Truncated),
            (&bad_flag, CodecError::Inflate),
        ];
        for (record, want) in cases {
            assert_eq!(Value::decode(record), Err(want));
        }
        // Every cut of a good record is an error or a value, never a panic.
        for n in 0..good.len() {
            let _ = Value::decode(&good[..n]);
        }
    }
}
