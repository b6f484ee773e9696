//! Fuzz target: arbitrary text through the `esi:when` expression parser and evaluator and the
//! variable-string parser; nothing may panic or overflow the stack.
#![no_main]

use esi_proxy::esi::{parse_expr, Request, VarPolicy, VarString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(expr) = parse_expr(&text, 32) {
        let req = Request::new().with_query("a=1&b=x").with_cookie("c=2").with_user_agent("Mozilla/5.0");
        expr.eval(&req, &VarPolicy::default());
    }
    let _ = VarString::parse(&text);
});
