//! `esi-proxy check-config` run as a real process on the documented config and on broken files:
//! each problem printed as `file:line: field: message`, and the exit status.

use std::process::Output;

use crate::support::process::run;

async fn check_config(file: &str) -> Output {
    run(&["check-config", file]).await
}

/// Runs `check-config` on a file expected to fail and checks its whole output: one
/// `file:line: message` per wanted `(line, message)`, in order, and exit status 1.
async fn assert_problems(file: &str, want: &[(usize, &str)]) {
    let out = check_config(file).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = stdout.lines().collect();
    let want: Vec<String> = want
        .iter()
        .map(|(line, message)| format!("{file}:{line}: {message}"))
        .collect();
    assert_eq!(got, want, "{file}");
    assert_eq!(out.status.code(), Some(1), "{file}: {out:?}");
}

/// README: "`cargo run --release -- check-config config/esi-proxy.toml`"; "Every limit has a documented default in `config/esi-proxy.toml`".
#[tokio::test]
async fn documented_config_is_ok() {
    for file in ["config/esi-proxy.toml", "tests/data/config/valid.toml"] {
        let out = check_config(file).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{file}: ok\n")
        );
        assert!(out.status.success(), "{out:?}");
    }
}

#[tokio::test]
async fn syntax_error_names_file_and_line() {
    assert_problems(
        "tests/data/config/syntax-error.toml",
        &[(5, "invalid table header: expected `.`, `]`")],
    )
    .await;
}

#[tokio::test]
async fn unknown_field_names_its_line_and_dotted_path() {
    assert_problems(
        "tests/data/config/unknown-field.toml",
        &[(
            7,
            "fetch.timeout_ms: unknown field `timeout_ms`, expected one of `connect_timeout_ms`, \
             `fragment_timeout_ms`, `layout_timeout_ms`, `page_timeout_ms`, `max_fragment_bytes`, \
             `max_layout_bytes`, `max_page_bytes`, `max_concurrent_per_page`, `max_concurrent`, \
             `pool_idle_per_host`, `pool_idle_timeout_ms`, `origin_http2`, `forward_headers`, \
             `hosts`, `ca_certs`, `breaker`",
        )],
    )
    .await;
}

#[tokio::test]
async fn unknown_field_in_second_host_entry_names_that_entry() {
    assert_problems(
        "tests/data/config/unknown-host-field.toml",
        &[(
            7,
            "fetch.hosts[1].weight: unknown field `weight`, expected one of `url`, `trusted`, \
             `esi`, `private_network`, `http2`, `breaker`",
        )],
    )
    .await;
}

#[tokio::test]
async fn wrong_type_names_the_field() {
    assert_problems(
        "tests/data/config/wrong-type.toml",
        &[(
            6,
            "fetch.fragment_timeout_ms: invalid type: string \"fast\", expected a non-negative \
             integer",
        )],
    )
    .await;
}

#[tokio::test]
async fn wrong_type_in_inline_table_names_the_list_entry() {
    assert_problems(
        "tests/data/config/wrong-type-inline.toml",
        &[(
            2,
            "esi.cookie_names[1]: invalid type: integer `42`, expected a string",
        )],
    )
    .await;
}

/// README: "`esi-proxy check-config FILE`, for operators: prints every problem with its line".
#[tokio::test]
async fn every_invalid_value_is_listed_with_its_line() {
    assert_problems(
        "tests/data/config/invalid-values.toml",
        &[
            (
                3,
                "server.listen: \"localhost:8080\" is not an address like 127.0.0.1:8080",
            ),
            (
                5,
                "server.log_format: \"xml\": expected \"text\" or \"json\"",
            ),
            (
                8,
                "esi.process_paths[1]: \"checkout/*\" does not start with '/': request paths \
                 always do",
            ),
            (
                9,
                "esi.max_depth: 50 is over the limit of 20: includes nested that deep are a loop",
            ),
            (
                12,
                "esi.cookie_names[1]: \"user name\" is not a cookie name (letters, digits and \
                 !#$%&'*+-.^_`|~ only)",
            ),
            (
                16,
                "fetch.fragment_timeout_ms: 15000 ms is longer than fetch.page_timeout_ms \
                 (10000 ms): the page deadline would always cut a slow fragment off first",
            ),
            (
                18,
                "fetch.forward_headers[1]: \"Cookie\" is never forwarded to fragments",
            ),
            (
                24,
                "fetch.hosts[1].url: \"http://gateway.internal:8081\" is the origin \
                 (server.origin), which is always allowed and trusted; remove this entry",
            ),
            (
                29,
                "fetch.hosts[2].url: \"HTTP://Header.internal:9000/\" is already listed as \
                 fetch.hosts[0]",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn host_url_with_user_info_is_refused_at_its_entry() {
    assert_problems(
        "tests/data/config/host-userinfo.toml",
        &[(
            9,
            "fetch.hosts[1].url: \"https://deploy:secret@cart.example.com\": user info is not \
             allowed",
        )],
    )
    .await;
}

#[tokio::test]
async fn missing_file_names_the_file() {
    let file = "tests/data/config/no-such-file.toml";
    let out = check_config(file).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("{file}: ")), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// The expression bounds of `[esi]` each have a range, reported with the field's line.
#[tokio::test]
async fn expression_bounds_out_of_range_are_reported() {
    assert_problems(
        "tests/data/config/expr-bounds.toml",
        &[
            (3, "esi.max_expr_evaluations: must be greater than 0"),
            (4, "esi.max_expr_value_bytes: 8 is below the minimum of 16"),
            (
                5,
                "esi.max_expr_list_items: 2000000 is over the limit of 1000000",
            ),
            (6, "esi.max_pattern_bytes: 100 is below the minimum of 1024"),
        ],
    )
    .await;
}
