//! Criterion benches of the ESI engine on real documents: a 1 MB page with no ESI, the 107 KB
//! layout with 120 includes (whole and fed in 16 KiB chunks, as from the network), and `when`
//! test evaluation. Inputs are built outside the timed loops.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use esi_proxy::esi::{parse, parse_expr, Event, ParseOptions, Parser, Request, VarPolicy};

const NO_ESI_1MB: &[u8] = include_bytes!("data/noesi-1mb.html");
const LAYOUT_120: &[u8] = include_bytes!("data/layout-120.html");

fn parse_whole(c: &mut Criterion) {
    let opts = ParseOptions::default();
    for (name, doc) in [
        ("no_esi_1mb", NO_ESI_1MB),
        ("layout_120_includes", LAYOUT_120),
    ] {
        let input = Bytes::from_static(doc);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_function("parse", |b| {
            b.iter(|| parse(black_box(input.clone()), &opts).expect("lenient parse never fails"))
        });
        group.bench_function("parse_chunked_16k", |b| {
            let chunks: Vec<Bytes> = doc.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
            let mut events: Vec<Event> = Vec::with_capacity(1024);
            b.iter(|| {
                let mut parser = Parser::new(opts.clone());
                events.clear();
                for chunk in &chunks {
                    parser.feed(chunk.clone(), &mut events).expect("lenient");
                }
                parser.finish(&mut events).expect("lenient");
                black_box(events.len())
            })
        });
        group.finish();
    }
}

fn when_eval(c: &mut Criterion) {
    let tests = [
        "$(HTTP_COOKIE{group})=='Advanced'",
        "(1==1)|('abc'=='def')",
        "$(QUERY_STRING{page}) >= 10 & !($(HTTP_HOST)=='example.com')",
        "$(HTTP_ACCEPT_LANGUAGE{de}) | $(HTTP_USER_AGENT{browser})=='MOZILLA'",
    ];
    let exprs: Vec<_> = tests
        .iter()
        .map(|t| parse_expr(t, 32).expect("valid test"))
        .collect();
    let req = Request::new()
        .with_host("shop.example")
        .with_query("page=12&sort=price")
        .with_cookie("session=abc123; group=Advanced; theme=dark")
        .with_accept_language("en-GB,en;q=0.9,de;q=0.5")
        .with_user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0");
    let policy = VarPolicy::default();
    let mut group = c.benchmark_group("when_eval");
    group.throughput(Throughput::Elements(exprs.len() as u64));
    group.bench_function("eval_4_tests", |b| {
        b.iter(|| {
            exprs
                .iter()
                .filter(|e| black_box(e).eval(&req, &policy))
                .count()
        })
    });
    group.bench_function("parse_4_tests", |b| {
        b.iter(|| {
            tests
                .iter()
                .map(|t| parse_expr(black_box(t), 32).is_ok() as usize)
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, parse_whole, when_eval);
criterion_main!(benches);
