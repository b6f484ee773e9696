# Varnish ESI peer with caching, for the warm scenarios of the load bench. Placeholders:
# {{ORIGIN_HOST}}, {{ORIGIN_PORT}}. A second instance beside varnish.vcl's. No `return (pass)`:
# the built-in vcl_recv looks every request up (the bench sends no cookie), and the built-in
# vcl_backend_response takes the TTL from the origin's `Cache-Control: s-maxage/max-age`. The
# layout is stored parsed for ESI; each include is its own cached object.
vcl 4.1;

backend origin {
    .host = "{{ORIGIN_HOST}}";
    .port = "{{ORIGIN_PORT}}";
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 30s;
}

sub vcl_backend_response {
    if (bereq.url ~ "^/page/esi/") {
        set beresp.do_esi = true;
    }
}
