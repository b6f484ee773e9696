//! Fuzz target: arbitrary bytes, fed whole and in two chunks, through the strict and lenient
//! parsers and the reference render; nothing may panic and both chunkings must agree.
#![no_main]

use bytes::Bytes;
use esi_proxy::esi::{parse, ParseOptions, Parser, Request, VarPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let _ = parse(input.clone(), &ParseOptions::strict());
    let whole = parse(input.clone(), &ParseOptions::default()).expect("lenient never fails");
    let mut out = Vec::new();
    let mut fetch = |url: &str| (url.len() % 2 == 0).then(|| Bytes::from_static(b"frag"));
    let _ = whole.render(&Request::new().with_cookie("a=1"), &VarPolicy::default(), &mut fetch, &mut out);

    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut parser = Parser::new(ParseOptions::default());
    let mut events = Vec::new();
    parser.feed(input.slice(..cut), &mut events).expect("lenient");
    parser.feed(input.slice(cut..), &mut events).expect("lenient");
    parser.finish(&mut events).expect("lenient");
    assert_eq!(parser.problem_count(), whole.problem_count);
});
