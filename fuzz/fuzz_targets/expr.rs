//! Fuzz target: arbitrary text through the expression parser (ESI 1.0 tests and the extended
//! grammar: literals, lists, dictionaries, calls, has/matches) and the evaluator under a small
//! budget, and through the variable-string parser; nothing may panic or overflow the stack,
//! and evaluation never spends past its budget.
#![no_main]

use esi_proxy::esi::{parse_expr, Budget, Context, Limits, Request, VarPolicy, VarString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(expr) = parse_expr(&text, 32) {
        let req = Request::new().with_query("a=1&b=x").with_cookie("c=2").with_user_agent("Mozilla/5.0");
        expr.eval(&req, &VarPolicy::default());
        let limits = Limits {
            max_evaluations: 2000,
            max_value_bytes: 4096,
            max_list_items: 64,
            max_pattern_bytes: 4096,
            ..Limits::default()
        };
        let budget = Budget::new(limits);
        let policy = VarPolicy::default();
        for _ in 0..2 {
            let mut cx = Context::new(&req, &policy, &budget);
            let _ = expr.value(&mut cx);
        }
        // Past the limit only by the charge that hit it (at most one regex's length charge).
        assert!(budget.evaluations() <= 2000 + 2 * 4096);
    }
    let _ = VarString::parse(&text);
});
