//! Where `esi:vars` output lands in the HTML around it: page text, a `<script>` body or event
//! handler, or a URL attribute. HTML-escaping is right only for the first; lint warns for the
//! others. A small tokenizer over the literal bytes of the document, fed in order; no I/O.

/// The HTML context at the current position of the bytes fed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Context {
    /// Page text or an attribute whose value HTML-escaping protects.
    Text,
    /// Inside a `<script>` or `<style>` body, or an `on*` event-handler attribute value.
    Script,
    /// Inside the value of a URL attribute (`href`, `src`, ...), named.
    Url(String),
}

/// Attributes whose value is a URL a browser follows or loads.
const URL_ATTRIBUTES: [&str; 13] = [
    "href",
    "src",
    "action",
    "formaction",
    "poster",
    "cite",
    "background",
    "data",
    "srcset",
    "xlink:href",
    "manifest",
    "ping",
    "longdesc",
];

/// Elements whose body is not HTML text: escaping does not protect what lands there.
const RAW_TEXT: [&str; 2] = ["script", "style"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Data,
    /// After `<`: the tag name so far (`/` first for an end tag).
    TagName(String),
    /// Inside a start tag `<name`, between attributes.
    InTag {
        element: String,
    },
    AttrName {
        element: String,
        name: String,
    },
    BeforeValue {
        element: String,
        name: String,
    },
    Value {
        element: String,
        name: String,
        quote: Option<u8>,
    },
    /// Inside `<!-- ... -->` (or `<!...>`); `dashes` counts trailing `-` for the end.
    Comment {
        dashes: u8,
        bogus: bool,
    },
    /// Inside a raw-text element's body, until `</element`.
    RawText {
        element: String,
        matched: usize,
    },
}

/// A tokenizer of the bytes around `esi:vars` output.
#[derive(Debug)]
pub(super) struct Tracker {
    state: State,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { state: State::Data }
    }
}

impl Tracker {
    /// The context the next byte would land in.
    pub(super) fn context(&self) -> Context {
        match &self.state {
            State::RawText { .. } => Context::Script,
            State::Value { name, .. } | State::BeforeValue { name, .. } => {
                if name.starts_with("on") {
                    Context::Script
                } else if URL_ATTRIBUTES.contains(&name.as_str()) {
                    Context::Url(name.clone())
                } else {
                    Context::Text
                }
            }
            _ => Context::Text,
        }
    }

    /// Advances over a variable's output, whatever its value: one byte of value text.
    pub(super) fn value(&mut self) {
        self.step(b'x');
    }

    /// Advances over `bytes`, the next literal bytes of the document.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        let state = std::mem::replace(&mut self.state, State::Data);
        self.state = match state {
            State::Data => match b {
                b'<' => State::TagName(String::new()),
                _ => State::Data,
            },
            State::TagName(mut name) => match b {
                b'!' if name.is_empty() => State::Comment {
                    dashes: 0,
                    bogus: true,
                },
                b'>' => after_tag(&name),
                b if b.is_ascii_whitespace() && !name.is_empty() => State::InTag { element: name },
                b if b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b':' => {
                    name.push(char::from(b.to_ascii_lowercase()));
                    State::TagName(name)
                }
                _ => State::Data,
            },
            State::InTag { element } => match b {
                b'>' => after_tag(&element),
                b if b.is_ascii_whitespace() || b == b'/' => State::InTag { element },
                b => State::AttrName {
                    element,
                    name: char::from(b.to_ascii_lowercase()).to_string(),
                },
            },
            State::AttrName { element, mut name } => match b {
                b'=' => State::BeforeValue { element, name },
                b'>' => after_tag(&element),
                b if b.is_ascii_whitespace() => State::InTag { element },
                b => {
                    name.push(char::from(b.to_ascii_lowercase()));
                    State::AttrName { element, name }
                }
            },
            State::BeforeValue { element, name } => match b {
                b'"' | b'\'' => State::Value {
                    element,
                    name,
                    quote: Some(b),
                },
                b if b.is_ascii_whitespace() => State::BeforeValue { element, name },
                b'>' => after_tag(&element),
                _ => State::Value {
                    element,
                    name,
                    quote: None,
                },
            },
            State::Value {
                element,
                name,
                quote,
            } => match (quote, b) {
                (Some(q), b) if b == q => State::InTag { element },
                (None, b) if b.is_ascii_whitespace() => State::InTag { element },
                (None, b'>') => after_tag(&element),
                _ => State::Value {
                    element,
                    name,
                    quote,
                },
            },
            State::Comment { dashes, bogus } => match b {
                b'-' if bogus && dashes == 0 => State::Comment {
                    dashes: 1,
                    bogus: true,
                },
                b'-' if bogus && dashes == 1 => State::Comment {
                    dashes: 0,
                    bogus: false,
                },
                b'>' if bogus || dashes >= 2 => State::Data,
                b'-' => State::Comment {
                    dashes: dashes.saturating_add(1),
                    bogus,
                },
                _ => State::Comment { dashes: 0, bogus },
            },
            State::RawText { element, matched } => {
                // Looks for `</element`; the `>` after it is read as a tag's end.
                let end = format!("</{element}");
                let want = end.as_bytes().get(matched).copied();
                if want.is_some_and(|w| w == b.to_ascii_lowercase()) {
                    if matched + 1 == end.len() {
                        State::InTag {
                            element: format!("/{element}"),
                        }
                    } else {
                        State::RawText {
                            element,
                            matched: matched + 1,
                        }
                    }
                } else {
                    let matched = usize::from(b == b'<');
                    State::RawText { element, matched }
                }
            }
        };
    }
}

/// The state after a tag's `>`: a raw-text body for `<script>` and `<style>`, text otherwise.
fn after_tag(element: &str) -> State {
    if RAW_TEXT.contains(&element) {
        State::RawText {
            element: element.to_owned(),
            matched: 0,
        }
    } else {
        State::Data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_of_the_position_after_each_prefix() {
        let url = |name: &str| Context::Url(name.to_owned());
        let cases: Vec<(&str, Context)> = vec![
            ("<p>Hello ", Context::Text),
            ("<script>var u = '", Context::Script),
            ("<SCRIPT type=module>x(", Context::Script),
            ("<script>a</script><p>", Context::Text),
            ("<script>if (a</b) {", Context::Script),
            ("<style>body{background:url(", Context::Script),
            ("<a href=\"", url("href")),
            ("<a class=x href='/u/", url("href")),
            ("<img src=", url("src")),
            ("<a href=\"/x\">", Context::Text),
            ("<a title=\"", Context::Text),
            ("<button onclick=\"go('", Context::Script),
            ("<!-- <script> --><p>", Context::Text),
            ("<form action=\"", url("action")),
        ];
        for (prefix, want) in cases {
            let mut t = Tracker::default();
            t.feed(prefix.as_bytes());
            assert_eq!(t.context(), want, "{prefix}");
        }
    }
}
