//! A fragment body collected as it arrives, whichever protocol brings it: checked against
//! `fetch.max_fragment_bytes` chunk by chunk, decoded when the host encoded it.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::HeaderMap;

use super::client::{content_coding, Coding};
use super::decode::Decoder;
use super::FetchError;

/// Where a fragment's body bytes go until its end.
pub(super) struct BodySink<'t> {
    url: &'t str,
    limit: usize,
    into: Into,
}

enum Into {
    /// Kept as sent, in a buffer sized to the declared length.
    Plain(BytesMut),
    /// Decoded as they come; `encoded` counts what was sent, since an empty body stays empty
    /// whatever its encoding claims (as reqwest has it).
    Decoded {
        decoder: Box<Decoder>,
        out: Vec<u8>,
        encoded: usize,
    },
}

impl<'t> BodySink<'t> {
    /// A sink for a response with `headers` and `declared` length (`None`: unknown). A body
    /// that will be decoded loses `Content-Encoding` and `Content-Length`, which no longer
    /// describe it.
    ///
    /// # Errors
    /// [`FetchError::Decode`] for a coding no decoder knows, [`FetchError::TooLarge`] when the
    /// declared length is over the limit.
    pub(super) fn new(
        headers: &mut HeaderMap,
        declared: Option<u64>,
        limit: usize,
        url: &'t str,
    ) -> Result<Self, FetchError> {
        let into = match content_coding(headers) {
            Coding::Identity => {
                if declared.is_some_and(|len| len > limit as u64) {
                    return Err(FetchError::TooLarge {
                        url: url.to_owned(),
                        limit,
                    });
                }
                // Sized to the declared length: the body is kept (cached) as it is collected.
                let capacity = declared.map_or(0, |len| usize::try_from(len).unwrap_or(limit));
                Into::Plain(BytesMut::with_capacity(capacity))
            }
            Coding::Named(coding) => {
                let decoder =
                    Decoder::for_encoding(&coding, limit).ok_or_else(|| FetchError::Decode {
                        url: url.to_owned(),
                        message: format!("unsupported content-encoding {coding:?}"),
                    })?;
                headers.remove(CONTENT_ENCODING);
                headers.remove(CONTENT_LENGTH);
                Into::Decoded {
                    decoder: Box::new(decoder),
                    out: Vec::new(),
                    encoded: 0,
                }
            }
        };
        Ok(Self { url, limit, into })
    }

    /// Takes the next bytes of the body.
    ///
    /// # Errors
    /// [`FetchError::TooLarge`] when the body (decoded) passes the limit,
    /// [`FetchError::Decode`] when it does not decode.
    pub(super) fn push(&mut self, data: &[u8]) -> Result<(), FetchError> {
        let limit = self.limit;
        match &mut self.into {
            Into::Plain(collected) => {
                if collected.len() + data.len() > limit {
                    return Err(FetchError::TooLarge {
                        url: self.url.to_owned(),
                        limit,
                    });
                }
                collected.extend_from_slice(data);
                Ok(())
            }
            Into::Decoded {
                decoder,
                out,
                encoded,
            } => {
                *encoded = encoded.saturating_add(data.len());
                decoder
                    .push(data, out, limit)
                    .map_err(|e| e.into_fetch_error(self.url, limit))
            }
        }
    }

    /// The whole body, once the response has ended.
    ///
    /// # Errors
    /// [`FetchError::Decode`] when an encoded body ends before its coding does.
    pub(super) fn finish(self) -> Result<Bytes, FetchError> {
        match self.into {
            Into::Plain(collected) => Ok(collected.freeze()),
            Into::Decoded {
                mut decoder,
                mut out,
                encoded,
            } => {
                if encoded > 0 {
                    decoder
                        .finish(&mut out)
                        .map_err(|e| e.into_fetch_error(self.url, self.limit))?;
                }
                Ok(Bytes::from(out))
            }
        }
    }
}
