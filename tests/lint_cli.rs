//! `esi-proxy lint` run as a real process on good and bad files: output lines and exit status.

use crate::support::process::run;

/// README: "`esi-proxy lint`, for fragment teams: checks markup and prints `file:line:col: message`".
#[tokio::test]
async fn good_file_passes_with_no_output() {
    let out = run(&["lint", "tests/data/lint/good.html"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(out.status.success(), "{out:?}");
}

/// README: "The exit status is 1 when any error is found, so `lint` can gate a fragment service's CI".
#[tokio::test]
async fn bad_file_reports_each_problem_with_file_line_col() {
    let out = run(&[
        "lint",
        "tests/data/lint/good.html",
        "tests/data/lint/bad.html",
    ])
    .await;
    let f = "tests/data/lint/bad.html";
    let want = [
        format!("{f}:2:1: warning: <esi:include src=\"/fragments/header\"> has no alt, no onerror=\"continue\" and no enclosing <esi:try>: a failure leaves the page to the proxy's policy"),
        format!("{f}:3:1: error: unknown element <esi:includ>"),
        format!("{f}:4:1: warning: ESI markup inside <esi:remove> is dropped unprocessed"),
        format!("{f}:6:3: error: bad test expression: expected an operand, found the end of the expression at offset 21"),
        format!("{f}:8:1: error: <esi:when> is not allowed outside <esi:choose>"),
        format!("{f}:9:1: warning: unknown variable $(USER_NAME) is always empty"),
        format!("{f}:12:1: error: </esi:try> while <esi:attempt> is still open"),
        format!("{f}:10:1: error: <esi:try> without <esi:except>"),
    ];
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = stdout.lines().collect();
    let mut want_sorted: Vec<&str> = want.iter().map(String::as_str).collect();
    want_sorted.sort_by_key(|l| line_col(l));
    assert_eq!(got, want_sorted);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 errors, 3 warnings in 2 files"));
}

fn line_col(line: &str) -> (u32, u32) {
    let mut parts = line
        .split(':')
        .skip(1)
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[tokio::test]
async fn missing_file_is_a_clear_error() {
    let out = run(&["lint", "tests/data/lint/no-such-file.html"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading tests/data/lint/no-such-file.html"),
        "{stderr}"
    );
}

/// README: "`esi-proxy lint` warns, with line and column, for each variable in `esi:vars` that
/// lands in one of those places" (a script or a URL attribute; page text is fine).
#[tokio::test]
async fn vars_output_in_scripts_and_urls_is_warned_not_in_text() {
    let out = run(&["lint", "tests/data/lint/vars_contexts.html"]).await;
    let f = "tests/data/lint/vars_contexts.html";
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = stdout.lines().collect();
    let escaped = "its value is HTML-escaped, which does not make it safe there";
    let want = [
        format!("{f}:4:21: warning: $(HTTP_COOKIE{{name}}) in <esi:vars> lands inside the URL attribute href: {escaped}"),
        format!("{f}:5:21: warning: $(HTTP_COOKIE{{name}}) in <esi:vars> lands inside a <script>, <style> or event handler: {escaped}"),
    ];
    assert_eq!(got, want);
    assert!(out.status.success(), "warnings only: {out:?}");
}
