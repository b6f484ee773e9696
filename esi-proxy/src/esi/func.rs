//! The ESI function library (`$lower(..)`, `$substr(..)`, `$add_header(..)` ...): names, the
//! number of arguments each takes (checked when an expression is parsed), and their evaluation.
//! Pure: the clock and the random seed come from the [`Context`]; response functions only
//! record an [`Effect`] for the composer to apply.

use std::borrow::Cow;

use super::eval::{Bound, Context, Effect, Value};
use super::md5;
use super::parse::decode_entities;
use super::vars::{escape_html, percent_decode, percent_encode};

/// A library function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `$lower(s)`
    Lower,
    /// `$upper(s)`
    Upper,
    /// `$strip(s)`: whitespace removed at both ends.
    Strip,
    /// `$lstrip(s)`
    Lstrip,
    /// `$rstrip(s)`
    Rstrip,
    /// `$substr(s, start[, length])`, in characters; a negative start counts from the end.
    Substr,
    /// `$replace(s, old, new[, count])`
    Replace,
    /// `$str(v)`
    Str,
    /// `$int(v)`: the integer part, 0 when not a number.
    Int,
    /// `$join(list, sep)`
    Join,
    /// `$string_split(s[, sep[, max_splits]])`; with no or an empty `sep`, on whitespace.
    StringSplit,
    /// `$len(v)`: characters of a string, items of a list or dictionary.
    Len,
    /// `$index(s, sub)`: the first character index of `sub`, or -1.
    Index,
    /// `$rindex(s, sub)`: the last character index of `sub`, or -1.
    Rindex,
    /// `$list_delitem(list, i)`: the list without item `i` (negative counts from the end).
    ListDelitem,
    /// `$exists(v)`: whether `v` is defined.
    Exists,
    /// `$is_empty(v)`: whether `v` is undefined, `''`, or an empty list or dictionary.
    IsEmpty,
    /// `$html_encode(s)`
    HtmlEncode,
    /// `$html_decode(s)`
    HtmlDecode,
    /// `$url_encode(s)`
    UrlEncode,
    /// `$url_decode(s)`
    UrlDecode,
    /// `$base64_encode(s)`
    Base64Encode,
    /// `$base64_decode(s)`
    Base64Decode,
    /// `$digest_md5(s)`: the MD5 digest as four 32-bit integers (little-endian words).
    DigestMd5,
    /// `$digest_md5_hex(s)`
    DigestMd5Hex,
    /// `$time()`: seconds since the Unix epoch.
    Time,
    /// `$http_time(t)`: `t` as an HTTP date.
    HttpTime,
    /// `$strftime(t, format)`
    Strftime,
    /// `$rand([n])`: an integer in `0..n` (default 100000000).
    Rand,
    /// `$dollar()`: `$`.
    Dollar,
    /// `$dquote()`: `"`.
    Dquote,
    /// `$squote()`: `'`.
    Squote,
    /// `$add_header(name, value)`: adds a header to the page's response.
    AddHeader,
    /// `$set_response_code(code[, body])`: the page's status (and body).
    SetResponseCode,
    /// `$set_redirect(url[, code])`: a redirect instead of the page.
    SetRedirect,
}

/// Every function: its name and the least and most arguments it takes.
const FUNCS: &[(&str, Func, usize, usize)] = &[
    ("lower", Func::Lower, 1, 1),
    ("upper", Func::Upper, 1, 1),
    ("strip", Func::Strip, 1, 1),
    ("lstrip", Func::Lstrip, 1, 1),
    ("rstrip", Func::Rstrip, 1, 1),
    ("substr", Func::Substr, 2, 3),
    ("replace", Func::Replace, 3, 4),
    ("str", Func::Str, 1, 1),
    ("int", Func::Int, 1, 1),
    ("join", Func::Join, 2, 2),
    ("string_split", Func::StringSplit, 1, 3),
    ("len", Func::Len, 1, 1),
    ("index", Func::Index, 2, 2),
    ("rindex", Func::Rindex, 2, 2),
    ("list_delitem", Func::ListDelitem, 2, 2),
    ("exists", Func::Exists, 1, 1),
    ("is_empty", Func::IsEmpty, 1, 1),
    ("html_encode", Func::HtmlEncode, 1, 1),
    ("html_decode", Func::HtmlDecode, 1, 1),
    ("url_encode", Func::UrlEncode, 1, 1),
    ("url_decode", Func::UrlDecode, 1, 1),
    ("base64_encode", Func::Base64Encode, 1, 1),
    ("base64_decode", Func::Base64Decode, 1, 1),
    ("digest_md5", Func::DigestMd5, 1, 1),
    ("digest_md5_hex", Func::DigestMd5Hex, 1, 1),
    ("time", Func::Time, 0, 0),
    ("http_time", Func::HttpTime, 1, 1),
    ("strftime", Func::Strftime, 2, 2),
    ("rand", Func::Rand, 0, 1),
    ("dollar", Func::Dollar, 0, 0),
    ("dquote", Func::Dquote, 0, 0),
    ("squote", Func::Squote, 0, 0),
    ("add_header", Func::AddHeader, 2, 2),
    ("set_response_code", Func::SetResponseCode, 1, 2),
    ("set_redirect", Func::SetRedirect, 1, 2),
];

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const DAY_NAMES: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

// === impl Func ===

impl Func {
    /// The function named `name` (without the `$`).
    pub fn from_name(name: &str) -> Option<Func> {
        FUNCS.iter().find(|f| f.0 == name).map(|f| f.1)
    }

    /// The name as written, without the `$`.
    pub fn name(self) -> &'static str {
        self.entry().0
    }

    /// Every function's name, in the library's order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FUNCS.iter().map(|f| f.0)
    }

    /// Whether the function changes the page's response rather than computing a value.
    pub fn is_response(self) -> bool {
        matches!(
            self,
            Func::AddHeader | Func::SetResponseCode | Func::SetRedirect
        )
    }

    fn entry(self) -> &'static (&'static str, Func, usize, usize) {
        FUNCS
            .iter()
            .find(|f| f.1 == self)
            .expect("every function is in the table")
    }

    /// Checks a call's number of arguments.
    ///
    /// # Errors
    /// A message for a template author naming the function and what it takes.
    pub fn check_arity(self, n: usize) -> Result<(), String> {
        let &(name, _, min, max) = self.entry();
        if (min..=max).contains(&n) {
            return Ok(());
        }
        let takes = match (min, max) {
            (0, 0) => "no arguments".to_owned(),
            (1, 1) => "1 argument".to_owned(),
            (a, b) if a == b => format!("{a} arguments"),
            (a, b) if b == a + 1 => format!("{a} or {b} arguments"),
            (a, b) => format!("{a} to {b} arguments"),
        };
        Err(format!("`${name}` takes {takes}, found {n}"))
    }
}

/// Runs `func` on evaluated arguments (their number was checked when parsed).
///
/// # Errors
/// A bound hit by what the function would build.
pub(super) fn call<'a>(
    func: Func,
    args: Vec<Value<'a>>,
    cx: &mut Context<'a>,
) -> Result<Value<'a>, Bound> {
    let budget = cx.budget;
    let text = |i: usize| args.get(i).map_or(Cow::Borrowed(""), Value::text);
    let int = |i: usize| {
        args.get(i)
            .and_then(Value::as_num)
            .map(|n| n.trunc() as i64)
    };
    Ok(match func {
        Func::Lower => budget.string(text(0).to_lowercase())?,
        Func::Upper => budget.string(text(0).to_uppercase())?,
        Func::Strip => trimmed(&args, str::trim),
        Func::Lstrip => trimmed(&args, str::trim_start),
        Func::Rstrip => trimmed(&args, str::trim_end),
        Func::Substr => {
            let s = text(0);
            let chars: Vec<char> = s.chars().collect();
            let len = chars.len() as i64;
            let start = int(1).unwrap_or(0);
            let start = if start < 0 {
                (len + start).max(0)
            } else {
                start.min(len)
            };
            let end = match int(2) {
                Some(n) if n < 0 => (len + n).max(start),
                Some(n) => start.saturating_add(n).min(len),
                None => len,
            };
            let picked: String = chars[start as usize..end as usize].iter().collect();
            budget.string(picked)?
        }
        Func::Replace => {
            let (s, old, new) = (text(0), text(1), text(2));
            let count = int(3).map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(0));
            if old.is_empty() || count == 0 {
                budget.string(s.into_owned())?
            } else {
                // Bound the result before building it: each replacement adds at most this much.
                let grows = new.len().saturating_sub(old.len());
                let found = s.matches(&*old).count().min(count);
                if s.len() + found * grows > budget.limits().max_value_bytes {
                    return Err(budget.hit(Bound::ValueBytes));
                }
                budget.string(s.replacen(&*old, &new, count))?
            }
        }
        Func::Str => budget.string(text(0).into_owned())?,
        Func::Int => Value::Num(int(0).unwrap_or(0) as f64),
        Func::Join => {
            let sep = text(1);
            let items: Vec<String> = match args.first() {
                Some(Value::List(items)) => items.iter().map(|v| v.text().into_owned()).collect(),
                Some(other) => vec![other.text().into_owned()],
                None => Vec::new(),
            };
            let total = items.iter().map(String::len).sum::<usize>()
                + sep.len() * items.len().saturating_sub(1);
            if total > budget.limits().max_value_bytes {
                return Err(budget.hit(Bound::ValueBytes));
            }
            budget.string(items.join(&sep))?
        }
        Func::StringSplit => {
            let s = text(0);
            let sep = text(1);
            let max = int(2).and_then(|n| usize::try_from(n).ok());
            let limit = budget.limits().max_list_items;
            let parts: Vec<Value<'a>> = if sep.is_empty() {
                let words = s.split_whitespace();
                match max {
                    Some(m) => split_ws_n(&s, m),
                    None => words.take(limit + 1).map(owned).collect(),
                }
            } else {
                match max {
                    Some(m) => s
                        .splitn(m.saturating_add(1), &*sep)
                        .take(limit + 1)
                        .map(owned)
                        .collect(),
                    None => s.split(&*sep).take(limit + 1).map(owned).collect(),
                }
            };
            budget.items(parts.len())?;
            Value::List(parts)
        }
        Func::Len => Value::Num(match args.first() {
            Some(Value::List(items)) => items.len() as f64,
            Some(Value::Dict(pairs)) => pairs.len() as f64,
            Some(Value::Null) | None => 0.0,
            Some(other) => other.text().chars().count() as f64,
        }),
        Func::Index | Func::Rindex => {
            let (s, sub) = (text(0), text(1));
            let at = if func == Func::Index {
                s.find(&*sub)
            } else {
                s.rfind(&*sub)
            };
            Value::Num(at.map_or(-1.0, |b| s[..b].chars().count() as f64))
        }
        Func::ListDelitem => match (int(1), args.into_iter().next()) {
            (at, Some(Value::List(mut items))) => {
                let len = items.len() as i64;
                let i = at.unwrap_or(len);
                let i = if i < 0 { len + i } else { i };
                if (0..len).contains(&i) {
                    items.remove(i as usize);
                }
                Value::List(items)
            }
            (_, Some(other)) => other,
            (_, None) => Value::Null,
        },
        Func::Exists => Value::Bool(!matches!(args.first(), Some(Value::Null) | None)),
        Func::IsEmpty => Value::Bool(match args.first() {
            Some(Value::List(items)) => items.is_empty(),
            Some(Value::Dict(pairs)) => pairs.is_empty(),
            Some(other) => other.is_empty(),
            None => true,
        }),
        Func::HtmlEncode => {
            let mut out = Vec::new();
            escape_html(&text(0), &mut out);
            budget.string(String::from_utf8(out).expect("escaping keeps UTF-8"))?
        }
        Func::HtmlDecode => budget.string(decode_entities(&text(0)))?,
        Func::UrlEncode => {
            let mut out = String::new();
            percent_encode(&text(0), false, &mut out);
            budget.string(out)?
        }
        Func::UrlDecode => budget.string(percent_decode(&text(0)).into_owned())?,
        Func::Base64Encode => budget.string(base64_encode(text(0).as_bytes()))?,
        Func::Base64Decode => match base64_decode(&text(0)) {
            Some(bytes) => budget.string(String::from_utf8_lossy(&bytes).into_owned())?,
            None => Value::Null,
        },
        Func::DigestMd5 => {
            let d = md5::digest(text(0).as_bytes());
            Value::List(
                d.chunks_exact(4)
                    .map(|w| Value::Num(f64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))))
                    .collect(),
            )
        }
        Func::DigestMd5Hex => Value::Str(Cow::Owned(
            md5::digest(text(0).as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )),
        Func::Time => Value::Num(cx.now as f64),
        Func::HttpTime => match int(0) {
            Some(t) => Value::Str(Cow::Owned(strftime(t, "%a, %d %b %Y %H:%M:%S GMT"))),
            None => Value::Null,
        },
        Func::Strftime => {
            let format = text(1);
            if format.len() * 16 > budget.limits().max_value_bytes {
                return Err(budget.hit(Bound::ValueBytes));
            }
            match int(0) {
                Some(t) => budget.string(strftime(t, &format))?,
                None => Value::Null,
            }
        }
        Func::Rand => {
            let n = int(0).filter(|n| *n > 0).unwrap_or(100_000_000) as u64;
            Value::Num((cx.next_random() % n) as f64)
        }
        Func::Dollar => Value::Str(Cow::Borrowed("$")),
        Func::Dquote => Value::Str(Cow::Borrowed("\"")),
        Func::Squote => Value::Str(Cow::Borrowed("'")),
        Func::AddHeader => {
            let (name, value) = (text(0), text(1));
            if is_token(&name) && is_header_value(&value) {
                effect(cx, Effect::AddHeader(name.into_owned(), value.into_owned()))?;
            }
            Value::Null
        }
        Func::SetResponseCode => {
            if let Some(code) = int(0).and_then(|c| u16::try_from(c).ok()) {
                if (100..=599).contains(&code) {
                    let body = args.get(1).map(|b| b.text().into_owned());
                    if body.as_ref().map_or(0, String::len) > budget.limits().max_value_bytes {
                        return Err(budget.hit(Bound::ValueBytes));
                    }
                    effect(cx, Effect::SetStatus(code, body))?;
                }
            }
            Value::Null
        }
        Func::SetRedirect => {
            let url = text(0);
            let code = int(1).map_or(Some(302), |c| u16::try_from(c).ok());
            if let Some(code @ (301 | 302 | 303 | 307 | 308)) = code {
                if is_header_value(&url) && !url.is_empty() {
                    effect(cx, Effect::Redirect(url.into_owned(), code))?;
                }
            }
            Value::Null
        }
    })
}

fn owned<'a>(s: &str) -> Value<'a> {
    Value::Str(Cow::Owned(s.to_owned()))
}

/// `$strip` and friends: a borrowed argument stays borrowed.
fn trimmed<'a>(args: &[Value<'a>], trim: fn(&str) -> &str) -> Value<'a> {
    match args.first() {
        Some(Value::Str(Cow::Borrowed(s))) => Value::Str(Cow::Borrowed(trim(s))),
        Some(other) => Value::Str(Cow::Owned(trim(&other.text()).to_owned())),
        None => Value::Null,
    }
}

/// Splits on runs of whitespace at most `max` times; the rest is the last item.
fn split_ws_n<'a>(s: &str, max: usize) -> Vec<Value<'a>> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while out.len() < max {
        let Some(end) = rest.find(char::is_whitespace) else {
            break;
        };
        out.push(owned(&rest[..end]));
        rest = rest[end..].trim_start();
    }
    if !rest.is_empty() {
        out.push(owned(rest));
    }
    out
}

fn effect(cx: &mut Context<'_>, effect: Effect) -> Result<(), Bound> {
    cx.budget.items(cx.effects.len() + 1)?;
    cx.effects.push(effect);
    Ok(())
}

/// An HTTP header name (RFC 9110 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value that cannot split the response: no control characters but tab.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, whitespace ignored); None when malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    let body = s.trim_end_matches(|c: char| c == '=' || c.is_ascii_whitespace());
    for c in body.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let v = BASE64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Formats Unix time `t` (UTC) with `strftime` conversions: `%Y %y %m %d %e %H %I %M %S %p %j
/// %a %A %b %B %h %s %Z %z %%`; any other `%x` is kept as written.
pub(super) fn strftime(t: i64, format: &str) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::with_capacity(format.len() * 2);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let m = (month - 1) as usize;
        let piece = match spec {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year.rem_euclid(100)),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:>2}"),
            'H' => format!("{hour:02}"),
            'I' => format!("{:02}", (hour + 11) % 12 + 1),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'j' => format!("{yday:03}"),
            'a' => DAYS[weekday].to_owned(),
            'A' => DAY_NAMES[weekday].to_owned(),
            'b' | 'h' => MONTHS[m].to_owned(),
            'B' => MONTH_NAMES[m].to_owned(),
            's' => t.to_string(),
            'Z' => "GMT".to_owned(),
            'z' => "+0000".to_owned(),
            '%' => "%".to_owned(),
            other => format!("%{other}"),
        };
        out.push_str(&piece);
    }
    out
}

/// Year, month (1-12) and day of the day `days` after 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to the given date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[path = "func_tests.rs"]
mod tests;
