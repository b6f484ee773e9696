# Varnish ESI peer for the load bench. Placeholders: {{ORIGIN_HOST}}, {{ORIGIN_PORT}}.
# No caching: every request (the layout and each ESI include) is passed to the origin, so
# Varnish composes the page from fresh fetches, as esi-proxy does with its cache off.
vcl 4.1;

backend origin {
    .host = "{{ORIGIN_HOST}}";
    .port = "{{ORIGIN_PORT}}";
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 30s;
}

sub vcl_recv {
    return (pass);
}

sub vcl_backend_response {
    if (bereq.url ~ "^/page/esi/") {
        set beresp.do_esi = true;
    }
}
