//! The incremental ESI scanner: splits a body, fed in chunks as it arrives, into literal runs and
//! ESI tags. It never tokenises ordinary HTML: a vectorised search finds `<` and only `<esi:`,
//! `</esi:`, `<!--esi`, `<!--` and `<![CDATA[` are looked at. Knows nothing of element nesting.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// A position in the input, both 1-based; `col` counts bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Byte column, from 1.
    pub col: u32,
}

/// What the scanner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Literal bytes, a zero-copy slice of the input (HTML comments and CDATA included).
    Text(Bytes),
    /// `<esi:NAME ...>` or `<esi:NAME .../>`.
    Start {
        /// Element name after `esi:`.
        name: Bytes,
        /// The raw bytes between the name and `>` or `/>`.
        attrs: Bytes,
        /// Whether the tag ended with `/>`.
        self_closing: bool,
        /// Where the tag starts.
        pos: Pos,
    },
    /// `</esi:NAME>`.
    End {
        /// Element name after `esi:`.
        name: Bytes,
        /// Where the tag starts.
        pos: Pos,
    },
    /// `<!--esi`: the wrapper is dropped and what follows is processed.
    EsiCommentOpen(Pos),
    /// The `-->` that closes an `<!--esi` wrapper.
    EsiCommentClose(Pos),
    /// A whole `<esi:remove>..</esi:remove>`, dropped unparsed.
    Remove {
        /// Where `<esi:remove>` starts.
        pos: Pos,
        /// Whether `<esi:` occurs inside (a mistake lint reports).
        contains_esi: bool,
    },
    /// Markup the scanner could not complete; its bytes follow as a `Text` token.
    Malformed {
        /// What was wrong.
        problem: ScanProblem,
        /// Where it starts.
        pos: Pos,
    },
}

/// Why the scanner gave up on a piece of markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanProblem {
    /// An ESI tag longer than the bound.
    TagTooLong,
    /// An ESI tag cut off by the end of input.
    UnterminatedTag,
    /// `<esi:remove>` with no `</esi:remove>` before the end of input.
    UnclosedRemove,
    /// `<!--esi` with no `-->` before the end of input.
    UnclosedEsiComment,
    /// `<esi:text>` with no `</esi:text>` before the end of input (its content is kept).
    UnclosedText,
}

/// How far past an `<!--esi` the scanner looks for its `-->` before processing what follows.
/// An `<!--esi` never closed stays literal text (as other processors do), which needs the `-->`
/// seen first; a wrapper longer than this is processed as it streams, and if it is then never
/// closed its content is kept, processed (the outcome before this look-ahead existed).
pub const MAX_ESI_COMMENT_LOOKAHEAD: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    HtmlComment,
    Cdata,
    Remove {
        pos: Pos,
        contains_esi: bool,
    },
    /// Inside `<esi:text>`: everything up to `</esi:text>` is literal text.
    Text {
        pos: Pos,
    },
}

/// Incremental scanner state. Feed chunks with [`Scanner::feed`], then call [`Scanner::finish`].
#[derive(Debug)]
pub struct Scanner {
    /// Bytes held back from the last chunk: a possible marker or an incomplete tag.
    pending: Bytes,
    mode: Mode,
    in_esi_comment: bool,
    /// `pending` starts with an `<!--esi` whose `-->` has not been seen yet: chunks are appended
    /// until it is, or until [`MAX_ESI_COMMENT_LOOKAHEAD`] bytes are held.
    holding_comment: Option<BytesMut>,
    /// The `<!--esi` at the start of the next scan is opened without looking for its `-->`.
    comment_committed: bool,
    max_tag_bytes: usize,
    /// Line number of the first byte of the buffer being scanned.
    line: u32,
    /// Column (0-based) of the first byte of the buffer being scanned.
    col0: u32,
}

const ESI_OPEN: &[u8] = b"<esi:";
const ESI_CLOSE: &[u8] = b"</esi:";
const ESI_COMMENT: &[u8] = b"<!--esi";
const HTML_COMMENT: &[u8] = b"<!--";
const CDATA: &[u8] = b"<![CDATA[";
const REMOVE_END: &[u8] = b"</esi:remove";
const TEXT_END: &[u8] = b"</esi:text";

/// Line bookkeeping for one buffer: newlines are counted lazily, up to each position asked for.
struct Lines {
    counted_to: usize,
    line: u32,
    /// Index in the buffer just after the last newline seen, or None if none yet.
    last_nl: Option<usize>,
    col0: u32,
}

// === impl Lines ===

impl Lines {
    fn pos(&mut self, buf: &[u8], at: usize) -> Pos {
        self.advance(buf, at);
        let col = match self.last_nl {
            Some(start) => at - start,
            None => self.col0 as usize + at,
        };
        Pos {
            line: self.line,
            col: saturate(col) + 1,
        }
    }

    fn advance(&mut self, buf: &[u8], to: usize) {
        if to <= self.counted_to {
            return;
        }
        let span = &buf[self.counted_to..to];
        let n = bytecount::count(span, b'\n');
        if n > 0 {
            self.line = self.line.saturating_add(saturate(n));
            let last = memchr::memrchr(b'\n', span).expect("counted at least one newline");
            self.last_nl = Some(self.counted_to + last + 1);
        }
        self.counted_to = to;
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether `rest` (starting at `<`) is a proper prefix of a marker, so more input could make it one.
fn could_become_marker(rest: &[u8]) -> bool {
    [ESI_OPEN, ESI_CLOSE, CDATA, b"<!--esi "]
        .iter()
        .any(|m| rest.len() < m.len() && m.starts_with(rest))
}

/// Finds the end of a start tag whose name ends at `from`: the index of its `>`, skipping `>`
/// inside quoted attribute values.
fn find_tag_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let j = i + memchr::memchr3(b'>', b'"', b'\'', &buf[i..])?;
        match buf[j] {
            b'>' => return Some(j),
            quote => i = j + 1 + memchr::memchr(quote, &buf[j + 1..])? + 1,
        }
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

// === impl Scanner ===

impl Scanner {
    /// A scanner that refuses tags longer than `max_tag_bytes`.
    pub fn new(max_tag_bytes: usize) -> Self {
        Self {
            pending: Bytes::new(),
            mode: Mode::Normal,
            in_esi_comment: false,
            holding_comment: None,
            comment_committed: false,
            max_tag_bytes: max_tag_bytes.max(16),
            line: 1,
            col0: 0,
        }
    }

    /// Scans the next chunk of the body, appending what it finds to `out`. Bytes that may start
    /// a marker or an unfinished tag are held until the next chunk (at most the tag bound), and
    /// an `<!--esi` until its `-->` is seen (at most [`MAX_ESI_COMMENT_LOOKAHEAD`]).
    pub fn feed(&mut self, mut chunk: Bytes, out: &mut Vec<Token>) {
        if let Some(mut held) = self.holding_comment.take() {
            // Search only the new bytes (and the two before them, for a split `-->`).
            let from = held.len().saturating_sub(2).max(ESI_COMMENT.len());
            held.extend_from_slice(&chunk);
            let closed = memmem::find(&held[from..], b"-->").is_some();
            if !closed && held.len() <= MAX_ESI_COMMENT_LOOKAHEAD {
                self.holding_comment = Some(held);
                return;
            }
            self.comment_committed = !closed;
            self.scan(held.freeze(), false, out);
            self.comment_committed = false;
            return;
        }
        // Complete a held-back piece with just enough of the chunk (up to its first `>`, which
        // ends every tag and terminator), so the rest of the chunk is scanned without a copy.
        while !self.pending.is_empty() && !chunk.is_empty() {
            let cut = memchr::memchr(b'>', &chunk).map_or(chunk.len(), |i| i + 1);
            let head = chunk.split_to(cut);
            let mut joined = BytesMut::with_capacity(self.pending.len() + head.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&head);
            self.pending = Bytes::new();
            self.scan(joined.freeze(), false, out);
            if self.holding_comment.is_some() {
                // An `<!--esi` began in the joined piece: the rest of the chunk is held too.
                return self.feed(chunk, out);
            }
        }
        if !chunk.is_empty() {
            self.scan(chunk, false, out);
        }
    }

    /// Ends the input: held-back bytes are scanned as final, and unfinished constructs reported.
    pub fn finish(&mut self, out: &mut Vec<Token>) {
        let rest = match self.holding_comment.take() {
            Some(held) => held.freeze(),
            None => std::mem::take(&mut self.pending),
        };
        self.scan(rest, true, out);
        let pos = Pos {
            line: self.line,
            col: self.col0 + 1,
        };
        if let Mode::Remove { pos, .. } = self.mode {
            out.push(Token::Malformed {
                problem: ScanProblem::UnclosedRemove,
                pos,
            });
        }
        if let Mode::Text { pos } = self.mode {
            out.push(Token::Malformed {
                problem: ScanProblem::UnclosedText,
                pos,
            });
        }
        if self.in_esi_comment {
            out.push(Token::Malformed {
                problem: ScanProblem::UnclosedEsiComment,
                pos,
            });
        }
        self.mode = Mode::Normal;
        self.in_esi_comment = false;
    }

    /// Scans `buf`. Unless `eof`, bytes that cannot be decided yet go to `self.pending`.
    fn scan(&mut self, buf: Bytes, eof: bool, out: &mut Vec<Token>) {
        let mut lines = Lines {
            counted_to: 0,
            line: self.line,
            last_nl: None,
            col0: self.col0,
        };
        let mut i = 0; // scan position
        let mut text = 0; // start of the literal run not yet emitted
        let len = buf.len();
        let hold = |at: usize| if eof { len } else { at };

        let consumed = 'outer: loop {
            match self.mode {
                Mode::HtmlComment | Mode::Cdata => {
                    let end: &[u8] = if self.mode == Mode::Cdata {
                        b"]]>"
                    } else {
                        b"-->"
                    };
                    match memmem::find(&buf[i..], end) {
                        Some(k) => {
                            i += k + end.len();
                            self.mode = Mode::Normal;
                        }
                        None => {
                            // Keep the tail that may begin the terminator; the rest is text.
                            let keep = hold(len.saturating_sub(end.len() - 1).max(i));
                            emit_text(&buf, text, keep, out);
                            break 'outer keep;
                        }
                    }
                }
                Mode::Text { pos } => match memmem::find(&buf[i..], TEXT_END) {
                    Some(k) => {
                        let end = i + k;
                        let after = end + TEXT_END.len();
                        match memchr::memchr(b'>', &buf[after..]) {
                            Some(gt) => {
                                emit_text(&buf, text, end, out);
                                i = after + gt + 1;
                                text = i;
                                self.mode = Mode::Normal;
                            }
                            None if !eof => {
                                emit_text(&buf, text, end, out);
                                break 'outer end;
                            }
                            None => {
                                self.mode = Mode::Text { pos };
                                emit_text(&buf, text, len, out);
                                break 'outer len;
                            }
                        }
                    }
                    None => {
                        // Keep the tail that may begin the end tag; the rest is text.
                        let keep = hold(len.saturating_sub(TEXT_END.len() - 1).max(i));
                        emit_text(&buf, text, keep, out);
                        break 'outer keep;
                    }
                },
                Mode::Remove { pos, contains_esi } => match memmem::find(&buf[i..], REMOVE_END) {
                    Some(k) => {
                        let inner = &buf[i..i + k];
                        let contains_esi = contains_esi || memmem::find(inner, ESI_OPEN).is_some();
                        let after = i + k + REMOVE_END.len();
                        match memchr::memchr(b'>', &buf[after..]) {
                            Some(gt) => {
                                out.push(Token::Remove { pos, contains_esi });
                                i = after + gt + 1;
                                text = i;
                                self.mode = Mode::Normal;
                            }
                            None if !eof => {
                                self.mode = Mode::Remove { pos, contains_esi };
                                break 'outer i + k;
                            }
                            None => {
                                self.mode = Mode::Remove { pos, contains_esi };
                                break 'outer len;
                            }
                        }
                    }
                    None => {
                        let keep = hold(len.saturating_sub(REMOVE_END.len() - 1).max(i));
                        // Look at the held-back tail too: a marker may straddle `keep`.
                        let contains_esi =
                            contains_esi || memmem::find(&buf[i..], ESI_OPEN).is_some();
                        self.mode = Mode::Remove { pos, contains_esi };
                        break 'outer keep;
                    }
                },
                Mode::Normal => {
                    let lt = memchr::memchr(b'<', &buf[i..]).map(|k| i + k);
                    let close = if self.in_esi_comment {
                        memmem::find(&buf[i..lt.unwrap_or(len)], b"-->").map(|k| i + k)
                    } else {
                        None
                    };
                    if let Some(c) = close {
                        emit_text(&buf, text, c, out);
                        out.push(Token::EsiCommentClose(lines.pos(&buf, c)));
                        self.in_esi_comment = false;
                        i = c + 3;
                        text = i;
                        continue;
                    }
                    let Some(p) = lt else {
                        // No `<` left. Inside an ESI comment a split `-->` may be pending.
                        let keep = if self.in_esi_comment && !eof {
                            len - trailing_dashes(&buf[i..])
                        } else {
                            len
                        };
                        emit_text(&buf, text, keep, out);
                        break 'outer keep;
                    };
                    let rest = &buf[p..];
                    if rest.starts_with(ESI_OPEN) {
                        match self.start_tag(&buf, p, &mut lines, eof, out, &mut text) {
                            Some(next) => i = next,
                            None => break 'outer p,
                        }
                    } else if rest.starts_with(ESI_CLOSE) {
                        match memchr::memchr(b'>', &rest[ESI_CLOSE.len()..]) {
                            Some(k) if k <= self.max_tag_bytes => {
                                let name_end = p + ESI_CLOSE.len();
                                let name_len = buf[name_end..]
                                    .iter()
                                    .take_while(|b| is_name_byte(**b))
                                    .count();
                                emit_text(&buf, text, p, out);
                                out.push(Token::End {
                                    name: buf.slice(name_end..name_end + name_len),
                                    pos: lines.pos(&buf, p),
                                });
                                i = name_end + k + 1;
                                text = i;
                            }
                            Some(_) => {
                                self.malformed(
                                    &buf,
                                    p,
                                    ScanProblem::TagTooLong,
                                    &mut lines,
                                    out,
                                    &mut text,
                                );
                                i = p + 1;
                            }
                            None if rest.len() > self.max_tag_bytes => {
                                self.malformed(
                                    &buf,
                                    p,
                                    ScanProblem::TagTooLong,
                                    &mut lines,
                                    out,
                                    &mut text,
                                );
                                i = p + 1;
                            }
                            None if eof => {
                                self.malformed(
                                    &buf,
                                    p,
                                    ScanProblem::UnterminatedTag,
                                    &mut lines,
                                    out,
                                    &mut text,
                                );
                                i = p + 1;
                            }
                            None => {
                                emit_text(&buf, text, p, out);
                                break 'outer p;
                            }
                        }
                    } else if !self.in_esi_comment
                        && rest.starts_with(ESI_COMMENT)
                        && rest.len() > ESI_COMMENT.len()
                        && (rest[ESI_COMMENT.len()].is_ascii_whitespace()
                            || rest[ESI_COMMENT.len()] == b'<')
                    {
                        let committed = std::mem::take(&mut self.comment_committed) && p == 0;
                        if !committed && memmem::find(&rest[ESI_COMMENT.len()..], b"-->").is_none()
                        {
                            emit_text(&buf, text, p, out);
                            if eof {
                                // Never closed: the wrapper and all after it stay literal text.
                                out.push(Token::Malformed {
                                    problem: ScanProblem::UnclosedEsiComment,
                                    pos: lines.pos(&buf, p),
                                });
                                emit_text(&buf, p, len, out);
                                break 'outer len;
                            }
                            // Hold from here until the `-->` arrives (see `feed`).
                            let mut held = BytesMut::with_capacity((len - p) * 2);
                            held.extend_from_slice(rest);
                            self.holding_comment = Some(held);
                            break 'outer p;
                        }
                        emit_text(&buf, text, p, out);
                        out.push(Token::EsiCommentOpen(lines.pos(&buf, p)));
                        self.in_esi_comment = true;
                        i = p + ESI_COMMENT.len();
                        text = i;
                    } else if !self.in_esi_comment && rest.starts_with(HTML_COMMENT) {
                        if rest.len() < ESI_COMMENT.len() + 1
                            && !eof
                            && (ESI_COMMENT.starts_with(rest) || rest.starts_with(ESI_COMMENT))
                        {
                            emit_text(&buf, text, p, out);
                            break 'outer p;
                        }
                        self.mode = Mode::HtmlComment;
                        i = p + HTML_COMMENT.len();
                    } else if rest.starts_with(CDATA) {
                        self.mode = Mode::Cdata;
                        i = p + CDATA.len();
                    } else if !eof
                        && (could_become_marker(rest)
                            || (rest.len() < 8 && ESI_COMMENT.starts_with(rest)))
                    {
                        emit_text(&buf, text, p, out);
                        break 'outer p;
                    } else {
                        i = p + 1;
                    }
                }
            }
        };

        // Carry the line and column of the first held-back byte to the next scan.
        lines.advance(&buf, consumed);
        self.col0 = match lines.last_nl {
            Some(start) => saturate(consumed - start),
            None => self.col0.saturating_add(saturate(consumed)),
        };
        self.line = lines.line;
        if !eof && self.holding_comment.is_none() {
            self.pending = buf.slice(consumed..);
        }
    }

    /// Handles `<esi:` at `p`. Returns where scanning continues, or None when the tag is not
    /// complete yet and `p..` must be held back.
    fn start_tag(
        &mut self,
        buf: &Bytes,
        p: usize,
        lines: &mut Lines,
        eof: bool,
        out: &mut Vec<Token>,
        text: &mut usize,
    ) -> Option<usize> {
        let name_start = p + ESI_OPEN.len();
        let name_len = buf[name_start..]
            .iter()
            .take_while(|b| is_name_byte(**b))
            .count();
        let name_end = name_start + name_len;
        let bounded_end = (p + self.max_tag_bytes).min(buf.len());
        let end = if name_end < bounded_end {
            find_tag_end(&buf[..bounded_end], name_end)
        } else {
            None
        };
        let Some(gt) = end else {
            if buf.len() - p >= self.max_tag_bytes {
                self.malformed(buf, p, ScanProblem::TagTooLong, lines, out, text);
                return Some(p + 1);
            }
            if eof {
                self.malformed(buf, p, ScanProblem::UnterminatedTag, lines, out, text);
                return Some(p + 1);
            }
            emit_text(buf, *text, p, out);
            *text = p;
            return None;
        };
        let self_closing = gt > name_end && buf[gt - 1] == b'/';
        let attrs_end = if self_closing { gt - 1 } else { gt };
        let name = buf.slice(name_start..name_end);
        emit_text(buf, *text, p, out);
        let pos = lines.pos(buf, p);
        *text = gt + 1;
        if &name[..] == b"remove" && !self_closing {
            self.mode = Mode::Remove {
                pos,
                contains_esi: false,
            };
            return Some(gt + 1);
        }
        if &name[..] == b"text" && !self_closing {
            // `<esi:text>`: its tags are dropped, its content passes unprocessed.
            self.mode = Mode::Text { pos };
            return Some(gt + 1);
        }
        out.push(Token::Start {
            name,
            attrs: buf.slice(name_end..attrs_end),
            self_closing,
            pos,
        });
        Some(gt + 1)
    }

    /// Reports markup at `p` that cannot be completed; its bytes stay literal text.
    fn malformed(
        &mut self,
        buf: &Bytes,
        p: usize,
        problem: ScanProblem,
        lines: &mut Lines,
        out: &mut Vec<Token>,
        text: &mut usize,
    ) {
        emit_text(buf, *text, p, out);
        *text = p;
        out.push(Token::Malformed {
            problem,
            pos: lines.pos(buf, p),
        });
    }
}

fn emit_text(buf: &Bytes, from: usize, to: usize, out: &mut Vec<Token>) {
    if from < to {
        out.push(Token::Text(buf.slice(from..to)));
    }
}

/// How many `-` end `buf`, up to two (a `-->` that the next chunk may complete).
fn trailing_dashes(buf: &[u8]) -> usize {
    buf.iter().rev().take(2).take_while(|b| **b == b'-').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Vec<Token> {
        let mut s = Scanner::new(1024);
        let mut out = Vec::new();
        s.feed(Bytes::copy_from_slice(input), &mut out);
        s.finish(&mut out);
        out
    }

    fn text(s: &str) -> Token {
        Token::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn start(name: &str, attrs: &str, self_closing: bool, line: u32, col: u32) -> Token {
        Token::Start {
            name: Bytes::copy_from_slice(name.as_bytes()),
            attrs: Bytes::copy_from_slice(attrs.as_bytes()),
            self_closing,
            pos: Pos { line, col },
        }
    }

    #[test]
    fn tokens() {
        let cases: Vec<(&str, Vec<Token>)> = vec![
            ("plain <b>html</b>", vec![text("plain <b>html</b>")]),
            (
                "a<esi:include src=\"x\"/>b",
                vec![
                    text("a"),
                    start("include", " src=\"x\"", true, 1, 2),
                    text("b"),
                ],
            ),
            (
                "<esi:when test=\"$(A) > 1\">",
                vec![start("when", " test=\"$(A) > 1\"", false, 1, 1)],
            ),
            (
                "x\n  <esi:try>",
                vec![text("x\n  "), start("try", "", false, 2, 3)],
            ),
            (
                "a</esi:try >b",
                vec![
                    text("a"),
                    Token::End {
                        name: Bytes::from_static(b"try"),
                        pos: Pos { line: 1, col: 2 },
                    },
                    text("b"),
                ],
            ),
            (
                "<!-- <esi:include src=x/> -->",
                vec![text("<!-- <esi:include src=x/> -->")],
            ),
            ("<![CDATA[<esi:try>]]>", vec![text("<![CDATA[<esi:try>]]>")]),
            (
                "a<esi:remove><esi:include src=x/></esi:remove>b",
                vec![
                    text("a"),
                    Token::Remove {
                        pos: Pos { line: 1, col: 2 },
                        contains_esi: true,
                    },
                    text("b"),
                ],
            ),
            (
                "<!--esi <p>x</p>-->",
                vec![
                    Token::EsiCommentOpen(Pos { line: 1, col: 1 }),
                    text(" <p>x</p>"),
                    Token::EsiCommentClose(Pos { line: 1, col: 17 }),
                ],
            ),
            ("<!--esix -->", vec![text("<!--esix -->")]),
            (
                "<script>if (a<b && c) {}</script>",
                vec![text("<script>if (a<b && c) {}</script>")],
            ),
            (
                "<esi:include src='a",
                vec![
                    Token::Malformed {
                        problem: ScanProblem::UnterminatedTag,
                        pos: Pos { line: 1, col: 1 },
                    },
                    text("<esi:include src='a"),
                ],
            ),
            (
                "<esi:remove>x",
                vec![Token::Malformed {
                    problem: ScanProblem::UnclosedRemove,
                    pos: Pos { line: 1, col: 1 },
                }],
            ),
        ];
        for (input, want) in cases {
            let got = merge_text(scan_all(input.as_bytes()));
            assert_eq!(got, want, "input: {input}");
        }
    }

    /// Joins adjacent text tokens, so token lists from different chunkings compare equal.
    pub(crate) fn merge_text(tokens: Vec<Token>) -> Vec<Token> {
        let mut out: Vec<Token> = Vec::new();
        for t in tokens {
            match (out.last_mut(), t) {
                (Some(Token::Text(prev)), Token::Text(next)) => {
                    let mut joined = BytesMut::from(&prev[..]);
                    joined.extend_from_slice(&next);
                    *prev = joined.freeze();
                }
                (_, t) => out.push(t),
            }
        }
        out
    }

    #[test]
    fn every_split_point_gives_the_same_tokens() {
        let input = "<p>a</p>\n<!--esi <esi:include src=\"/a\"/> --><!-- c --><esi:remove>r</esi:remove>\
                     <![CDATA[<esi:x>]]><esi:when test=\"'a>b'=='c'\">x</esi:when><esi:comment text=\"c\"/>\
                     <!--e--><!--esi\n-->";
        let whole = merge_text(scan_all(input.as_bytes()));
        for cut in 0..=input.len() {
            for cut2 in cut..=input.len() {
                let mut s = Scanner::new(1024);
                let mut out = Vec::new();
                s.feed(Bytes::copy_from_slice(&input.as_bytes()[..cut]), &mut out);
                s.feed(
                    Bytes::copy_from_slice(&input.as_bytes()[cut..cut2]),
                    &mut out,
                );
                s.feed(Bytes::copy_from_slice(&input.as_bytes()[cut2..]), &mut out);
                s.finish(&mut out);
                assert_eq!(merge_text(out), whole, "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn esi_text_content_passes_unprocessed() {
        let input =
            "a<esi:text><esi:include src=\"/x\"/><!--esi $(HTTP_HOST) --></esi:text >b<esi:text/>c";
        let got = merge_text(scan_all(input.as_bytes()));
        assert_eq!(
            got,
            vec![
                text("a<esi:include src=\"/x\"/><!--esi $(HTTP_HOST) -->b"),
                // `<esi:text/>` is an empty element: the parser drops it.
                start("text", "", true, 1, 72),
                text("c"),
            ]
        );
        for cut in 0..=input.len() {
            let mut s = Scanner::new(1024);
            let mut out = Vec::new();
            s.feed(Bytes::copy_from_slice(&input.as_bytes()[..cut]), &mut out);
            s.feed(Bytes::copy_from_slice(&input.as_bytes()[cut..]), &mut out);
            s.finish(&mut out);
            assert_eq!(merge_text(out), got, "cut at {cut}");
        }
        let unclosed = merge_text(scan_all(b"a<esi:text><esi:x>"));
        assert_eq!(
            unclosed,
            vec![
                text("a<esi:x>"),
                Token::Malformed {
                    problem: ScanProblem::UnclosedText,
                    pos: Pos { line: 1, col: 2 },
                },
            ]
        );
    }

    #[test]
    fn unclosed_esi_comment_stays_literal_text() {
        let input = "a<!--esi <esi:include src=\"/x\"/> b";
        let want = vec![
            text("a"),
            Token::Malformed {
                problem: ScanProblem::UnclosedEsiComment,
                pos: Pos { line: 1, col: 2 },
            },
            text("<!--esi <esi:include src=\"/x\"/> b"),
        ];
        assert_eq!(merge_text(scan_all(input.as_bytes())), want);
        // Fed in pieces, the wrapper is held until the end of input decides.
        for cut in 0..=input.len() {
            let mut s = Scanner::new(1024);
            let mut out = Vec::new();
            s.feed(Bytes::copy_from_slice(&input.as_bytes()[..cut]), &mut out);
            s.feed(Bytes::copy_from_slice(&input.as_bytes()[cut..]), &mut out);
            s.finish(&mut out);
            assert_eq!(merge_text(out), want, "cut at {cut}");
        }
    }

    #[test]
    fn esi_comment_closed_in_a_later_chunk_is_processed() {
        let mut s = Scanner::new(1024);
        let mut out = Vec::new();
        s.feed(Bytes::from_static(b"a<!--esi x"), &mut out);
        assert_eq!(out, vec![text("a")], "held until its end is seen");
        s.feed(Bytes::from_static(b"y"), &mut out);
        s.feed(Bytes::from_static(b"-"), &mut out);
        s.feed(Bytes::from_static(b"->z"), &mut out);
        s.finish(&mut out);
        assert_eq!(
            merge_text(out),
            vec![
                text("a"),
                Token::EsiCommentOpen(Pos { line: 1, col: 2 }),
                text(" xy"),
                Token::EsiCommentClose(Pos { line: 1, col: 12 }),
                text("z"),
            ]
        );
    }

    #[test]
    fn esi_comment_longer_than_the_lookahead_is_processed_as_it_streams() {
        let mut s = Scanner::new(1024);
        let mut out = Vec::new();
        s.feed(Bytes::from_static(b"<!--esi "), &mut out);
        let filler = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..5 {
            s.feed(filler.clone(), &mut out);
        }
        assert_eq!(out[0], Token::EsiCommentOpen(Pos { line: 1, col: 1 }));
        s.finish(&mut out);
        assert!(matches!(
            out.last(),
            Some(Token::Malformed {
                problem: ScanProblem::UnclosedEsiComment,
                ..
            })
        ));
        let kept: usize = out
            .iter()
            .map(|t| match t {
                Token::Text(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(kept, 1 + 5 * 64 * 1024, "content kept, wrapper dropped");
    }

    #[test]
    fn tag_longer_than_the_bound_is_reported_and_kept_as_text() {
        let input = format!("<esi:include src=\"{}\"/>", "a".repeat(2000));
        let got = merge_text(scan_all(input.as_bytes()));
        assert_eq!(
            got,
            vec![
                Token::Malformed {
                    problem: ScanProblem::TagTooLong,
                    pos: Pos { line: 1, col: 1 }
                },
                text(&input)
            ]
        );
    }

    #[test]
    fn text_is_zero_copy() {
        let input = Bytes::from_static(b"hello <esi:include src=a/> world");
        let mut s = Scanner::new(1024);
        let mut out = Vec::new();
        s.feed(input.clone(), &mut out);
        s.finish(&mut out);
        let Token::Text(first) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(first.as_ptr(), input.as_ptr());
    }
}
